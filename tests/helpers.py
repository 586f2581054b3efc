"""Test helpers: polling with deadlines, free ports, real `evc` subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evc.net import free_port  # noqa: F401 - the tests take it from here

EVC = [sys.executable, "-m", "evc.cli"]


def wait_for(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str],
             interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s.

    ``what`` may be a function: it is called at the failure, so it shows the state then.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {text}")
        time.sleep(interval)


class Proc:
    """A real `evc ...` process whose output is collected line by line."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None,
                 stdin: bool = True, cwd: str | Path | None = None, name: str = "",
                 wrapper: list[str] | None = None) -> None:
        full_env = dict(os.environ)
        full_env.update({"PYTHONUNBUFFERED": "1", "NO_COLOR": "1"})
        full_env.update(env or {})
        self.name = name or args[0]
        self.args = args
        self.popen = subprocess.Popen(
            (wrapper or []) + EVC + args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def matching(self, text: str) -> list[str]:
        with self._lock:
            return [ln for ln in self.lines if text in ln]

    def wait_line(self, text: str, timeout: float = 15.0, count: int = 1) -> str:
        found = wait_for(lambda: len(self.matching(text)) >= count and self.matching(text),
                         timeout, lambda: f"{text!r} (x{count}) in the output of {self.name}:\n"
                         + "\n".join(self.lines[-30:]))
        return found[count - 1]

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def signal(self, sig: int, *, group: bool = False) -> None:
        """``sig`` to the process, or (``group``) to its whole process group, as a terminal
        sends Ctrl+C or, once closed, SIGHUP (a component's child processes get it too)."""
        if group:
            os.killpg(self.popen.pid, sig)
        else:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM and wait; a process that does not end in time is killed and reported."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
                raise AssertionError(
                    f"{self.name} did not stop within {timeout} s:\n{self.output}") from None
        self._reader.join(2)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def holds(condition: Callable[[], Any], seconds: float, what: str | Callable[[], str],
          interval: float = 0.05) -> None:
    """Poll ``condition`` for ``seconds``: it must be true at every look (the twin of
    ``wait_for``, for what must stay so, such as a page during an outage)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            text = what() if callable(what) else what
            raise AssertionError(f"no longer {text}")
        time.sleep(interval)


def run_evc(args: list[str], timeout: float = 60.0, env: dict[str, str] | None = None,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(EVC + args, capture_output=True, text=True, timeout=timeout,
                          env=full_env, input=input_text)


def one_clear_line(result, *needles: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]

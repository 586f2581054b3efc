"""A real pseudo-terminal running an `evc` process, read through a terminal emulator (pyte)."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import termios
import threading

import pyte

from tests.helpers import EVC, wait_for


class Terminal:
    def __init__(self, args: list[str], cols: int = 120, rows: int = 40,
                 env: dict[str, str] | None = None) -> None:
        self.cols, self.rows = cols, rows
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.lock = threading.Lock()
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        full_env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        full_env.update({"TERM": "xterm-256color", "PYTHONUNBUFFERED": "1",
                         "COLUMNS": str(cols), "LINES": str(rows)})
        full_env.update(env or {})
        self.proc = subprocess.Popen(EVC + args, stdin=slave, stdout=slave, stderr=slave,
                                     env=full_env, start_new_session=True, close_fds=True)
        os.close(slave)
        self.master = master
        self.raw = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.raw += data
                self.stream.feed(data)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def lines(self) -> list[str]:
        with self.lock:
            return list(self.screen.display)

    def text(self) -> str:
        return "\n".join(self.lines())

    def row_with(self, needle: str) -> int | None:
        """The first row starting with ``needle`` (the board's table comes first)."""
        for y, line in enumerate(self.lines()):
            if line.startswith(needle):
                return y
        return None

    def colour_of(self, y: int, word: str) -> str:
        """The foreground colour of the first character of ``word`` on row ``y``."""
        with self.lock:
            line = "".join(self.screen.buffer[y][x].data for x in range(self.cols))
            x = line.find(word)
            assert x >= 0, f"{word!r} not on row {y}: {line!r}"
            return self.screen.buffer[y][x].fg

    def wait_text(self, needle: str, timeout: float = 15.0) -> None:
        wait_for(lambda: needle in self.text(), timeout,
                 f"{needle!r} on the screen:\n{self.text()}")

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                raise AssertionError(f"process did not stop within {timeout} s") from None
        try:
            os.close(self.master)
        except OSError:
            pass
        return self.proc.returncode

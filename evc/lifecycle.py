"""How every process starts its threads and stops: one Event, no zombies.

Ctrl+C, SIGTERM and SIGHUP set one ``threading.Event`` that every thread
watches. A ``Crew`` starts a process's I/O threads; a thread that dies of an
unexpected exception logs its traceback, sets the stop event and leaves its
reason in ``Crew.crash``, so the process ends loudly (one line, exit 1)
instead of living on deaf.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from evc.errors import EvcError

log = logging.getLogger(__name__)


def install_stop_signals(stop: threading.Event) -> None:
    """Ctrl+C, SIGTERM and SIGHUP set ``stop``; a second Ctrl+C is ignored while stopping.

    SIGUSR1 prints every thread's stack to stderr (``kill -USR1 <pid>``): what a
    process that seems stuck is doing, without stopping it.
    """

    def _handler(signum: int, _frame: object) -> None:
        stop.set()

    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _handler)


def join_all(threads: list[threading.Thread], timeout: float = 1.5) -> list[str]:
    """Join ``threads`` within ``timeout`` in total; return the names still alive."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        if thread.ident is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


class ThreadCrashed(EvcError):
    """An I/O thread died of a bug; the process stops rather than live on deaf."""


class Crew:
    """The threads of one process, stopped together and never dying silently."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.threads: list[threading.Thread] = []
        self.crash: str | None = None
        self.error: EvcError | None = None  # a thread that stopped the process on purpose
        self._lock = threading.Lock()

    def spawn(self, target: Callable[..., Any], *args: Any, name: str,
              daemon: bool = False, start: bool = True) -> threading.Thread:
        """A thread running ``target(*args)``; an exception from it stops the process."""

        def guarded() -> None:
            try:
                target(*args)
            except EvcError as exc:  # a reason to stop, said to the user as it is
                with self._lock:
                    if self.error is None:
                        self.error = exc
                self.stop.set()
            except BaseException as exc:  # noqa: BLE001 - reported, then the process stops
                log.critical("thread %s died: %s", name, exc, exc_info=True)
                with self._lock:
                    if self.crash is None:
                        self.crash = f"{name}: {type(exc).__name__}: {exc}"
                self.stop.set()

        thread = threading.Thread(target=guarded, name=name, daemon=daemon)
        self.threads.append(thread)
        if start:
            thread.start()
        return thread

    def start(self) -> None:
        for thread in self.threads:
            if thread.ident is None:
                thread.start()

    def join(self, timeout: float = 1.5) -> list[str]:
        alive = join_all([t for t in self.threads if not t.daemon], timeout)
        if alive:
            log.warning("threads still running at exit: %s", ", ".join(alive))
        return alive

    def check(self) -> None:
        """Raise why a thread stopped the process, if one did: call after the main loop."""
        if self.error is not None:
            raise self.error
        if self.crash is not None:
            raise ThreadCrashed(f"internal error, stopping: thread {self.crash} (see the log)")

"""Process plumbing shared by every component: addresses, logging, clean stops.

Nothing here knows about charge points; it only makes each ``evc`` process
parse its addresses the same way, log the same way and stop the same way
(Ctrl+C and SIGTERM set one ``threading.Event`` that every thread watches).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evc.errors import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pair(self) -> tuple[str, int]:
        return (self.host, self.port)


def parse_address(text: str, *, default_host: str | None = None, what: str = "address") -> Address:
    """``HOST:PORT`` (or ``PORT`` when ``default_host`` is given) -> Address.

    Raises ConfigError with a message that names ``what`` and the bad text.
    """
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    if not sep:
        if default_host is None:
            raise ConfigError(f"bad {what} {text!r}: expected HOST:PORT")
        host, port_text = default_host, raw
    host = host.strip("[]")
    if not host:
        if default_host is None:
            raise ConfigError(f"bad {what} {text!r}: missing host, expected HOST:PORT")
        host = default_host
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad {what} {text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"bad {what} {text!r}: port must be 1-65535")
    return Address(host, port)


def port_free(addr: Address) -> bool:
    """True when ``addr`` can be bound now (nobody listens there)."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr.pair)
        except OSError:
            return False
    return True


def setup_logging(level: str, log_file: str | None, *, to_stderr: bool = True) -> None:
    """Log to ``log_file`` (if given) and to stderr (unless a screen owns it).

    kafka-python's own messages (reconnect attempts, metadata races) go to the log
    file only: on the terminal the user gets evc's one clear line instead.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level.upper())
    fmt = logging.Formatter(LOG_FORMAT)
    kafka_log = logging.getLogger("kafka")
    for handler in list(kafka_log.handlers):
        kafka_log.removeHandler(handler)
    kafka_log.propagate = False
    kafka_log.setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
    if log_file:
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot open log file {log_file}: {exc.strerror}") from None
        handler.setFormatter(fmt)
        root.addHandler(handler)
        kafka_log.addHandler(handler)
    else:
        kafka_log.addHandler(logging.NullHandler())
    if to_stderr:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        root.addHandler(stream)
    if not root.handlers:
        root.addHandler(logging.NullHandler())


def install_stop_signals(stop: threading.Event) -> None:
    """Ctrl+C and SIGTERM set ``stop``; a second Ctrl+C is ignored while stopping."""

    def _handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _handler)


def join_all(threads: list[threading.Thread], timeout: float = 1.5) -> list[str]:
    """Join ``threads`` within ``timeout`` in total; return the names still alive."""
    import time

    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


class KeyReader:
    """Single keys without Enter on a terminal, whole lines on a pipe.

    ``read(timeout)`` returns the next key or line (stripped), "" when nothing
    came in time, or None at end of input. The terminal is restored by
    ``close()`` (and on exit, even after a signal).
    """

    def __init__(self, stream: object = None) -> None:
        import atexit

        self.stream = stream if stream is not None else sys.stdin
        self.fd: int | None
        try:
            self.fd = self.stream.fileno()  # type: ignore[attr-defined]
        except (AttributeError, ValueError, OSError):
            self.fd = None
        self.is_tty = self.fd is not None and os.isatty(self.fd)
        self._saved: list[object] | None = None
        self._buffer = b""
        if self.is_tty:
            import termios
            import tty

            assert self.fd is not None
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
            atexit.register(self.close)

    def read(self, timeout: float) -> str | None:
        import select

        if self.fd is None:
            return None
        if self.is_tty:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return ""
            data = os.read(self.fd, 1)
            if not data:
                return None
            return data.decode("utf-8", "replace")
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return ""
            chunk = os.read(self.fd, 4096)
            if not chunk:
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return line.decode("utf-8", "replace").strip()
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace").strip()

    def close(self) -> None:
        if self._saved is not None and self.fd is not None:
            import termios

            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except (termios.error, OSError):
                pass
            self._saved = None


def pump_keys(reader: KeyReader, put: Callable[[str], None], stop: threading.Event) -> None:
    """Hand every key (or piped line) to ``put`` until ``stop`` or end of input."""
    while not stop.is_set():
        key = reader.read(0.2)
        if key is None:
            return
        if key:
            put(key)


def say(text: str, *, millis: bool = False) -> None:
    """One timestamped line on stdout for the person watching; a closed stdout is ignored."""
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    if millis:
        stamp += f".{int(now * 1000) % 1000:03d}"
    try:
        sys.stdout.write(f"{stamp} {text}\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass

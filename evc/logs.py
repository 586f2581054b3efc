"""Logging set up the same way in every process."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from evc.errors import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str, log_file: str | None, *, to_stderr: bool = True) -> None:
    """Log to ``log_file`` (if given) and to stderr (unless a screen owns it).

    kafka-python's own messages (reconnect attempts, metadata races) go to the log
    file only: on the terminal the user gets evc's one clear line instead.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.setLevel(level.upper())
    fmt = logging.Formatter(LOG_FORMAT)
    kafka_log = logging.getLogger("kafka")
    for old in list(kafka_log.handlers):
        kafka_log.removeHandler(old)
    kafka_log.propagate = False
    kafka_log.setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
    if log_file:
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot open log file {log_file}: {exc.strerror}") from exc
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


class _Through(logging.Handler):
    def __init__(self, write: Callable[[str], None]) -> None:
        super().__init__()
        self.write = write
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def log_through(write: Callable[[str], None]) -> None:
    """The lines meant for stderr go through ``write`` instead: a screen that redraws a
    status line in place prints them above it, and the status line stays whole."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:
            root.removeHandler(handler)
            root.addHandler(_Through(write))

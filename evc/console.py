"""The person at the terminal: timestamped lines, keys, and an editable command line.

``KeyReader`` gives whole keys on a terminal (a complete UTF-8 character, or a
named key such as ``UP`` for an escape sequence) and whole lines on a pipe.
``LineEditor`` turns keys into a command line with a cursor, backspace and
history, the way a shell prompt behaves. ``say`` prints one timestamped line.
"""

from __future__ import annotations

import atexit
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

# Named keys (anything longer than one character is a named key)
UP, DOWN, LEFT, RIGHT, HOME, END, DELETE, ESC = (
    "UP", "DOWN", "LEFT", "RIGHT", "HOME", "END", "DELETE", "ESC")
_CSI = {b"A": UP, b"B": DOWN, b"C": RIGHT, b"D": LEFT, b"H": HOME, b"F": END,
        b"1~": HOME, b"7~": HOME, b"4~": END, b"8~": END, b"3~": DELETE}


def stamp(now: float | None = None, *, millis: bool = False) -> str:
    now = time.time() if now is None else now
    text = time.strftime("%H:%M:%S", time.localtime(now))
    if millis:
        text += f".{int(now * 1000) % 1000:03d}"
    return text


def say(text: str, *, millis: bool = False, out: TextIO | None = None) -> None:
    """One timestamped line for the person watching; a closed stdout is ignored."""
    try:
        stream = out or sys.stdout
        stream.write(f"{stamp(millis=millis)} {text}\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def _utf8_length(lead: int) -> int:
    if lead < 0x80:
        return 1
    if lead >> 5 == 0b110:
        return 2
    if lead >> 4 == 0b1110:
        return 3
    if lead >> 3 == 0b11110:
        return 4
    return 1  # a stray continuation byte: decoded as a replacement character


class KeyReader:
    """Single keys without Enter on a terminal, whole lines on a pipe.

    ``read(timeout)`` returns the next key or line (lines stripped), "" when
    nothing came in time, or None at end of input. The terminal is restored by
    ``close()`` (and at exit, even after a signal).
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self.fd: int | None
        try:
            self.fd = self.stream.fileno()
        except (AttributeError, ValueError, OSError):
            self.fd = None
        self.is_tty = self.fd is not None and os.isatty(self.fd)
        self._saved: list[Any] | None = None
        self._buffer = b""
        if self.is_tty:
            import termios
            import tty

            assert self.fd is not None
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
            atexit.register(self.close)

    def _ready(self, timeout: float) -> bool:
        assert self.fd is not None
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return bool(ready)

    def _byte(self, timeout: float) -> bytes | None:
        """One byte, b"" when none came within ``timeout``, None at end of input."""
        if self._buffer:
            byte, self._buffer = self._buffer[:1], self._buffer[1:]
            return byte
        if not self._ready(timeout):
            return b""
        assert self.fd is not None
        data = os.read(self.fd, 64)
        if not data:
            return None
        self._buffer = data[1:]
        return data[:1]

    def read(self, timeout: float) -> str | None:
        if self.fd is None:
            return None
        if self.is_tty:
            return self._key(timeout)
        return self._line(timeout)

    def _key(self, timeout: float) -> str | None:
        first = self._byte(timeout)
        if not first:
            return first if first is None else ""
        if first == b"\x1b":
            return self._escape()
        data = first
        for _ in range(_utf8_length(first[0]) - 1):
            more = self._byte(0.05)
            if not more:
                break
            data += more
        return data.decode("utf-8", "replace")

    def _escape(self) -> str:
        """ESC [ x / ESC O x sequences -> a named key; a lone ESC -> ESC."""
        second = self._byte(0.05)
        if second not in (b"[", b"O"):
            if second:
                self._buffer = second + self._buffer
            return ESC
        seq = b""
        while len(seq) < 8:
            nxt = self._byte(0.05)
            if not nxt:
                break
            seq += nxt
            if 0x40 <= nxt[0] <= 0x7E:  # the final byte of a control sequence
                break
        return _CSI.get(seq, ESC)

    def _line(self, timeout: float) -> str | None:
        assert self.fd is not None
        while b"\n" not in self._buffer:
            if not self._ready(timeout):
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


class LineEditor:
    """A command line edited key by key: cursor, backspace, delete, history.

    ``key(k)`` returns the finished line on Enter (and records it in the
    history), else None. ``text`` and ``cursor`` describe what to draw.
    """

    def __init__(self, limit: int = 200, history: int = 100) -> None:
        self.limit = limit
        self.keep = history
        self.chars: list[str] = []
        self.cursor = 0
        self.history: list[str] = []
        self._browse: int | None = None  # index into history while browsing with UP/DOWN
        self._draft: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def _set(self, text: str) -> None:
        self.chars = list(text)
        self.cursor = len(self.chars)

    def key(self, k: str) -> str | None:
        if k in ("\r", "\n"):
            line = self.text.strip()
            self._set("")
            self._browse = None
            if line and (not self.history or self.history[-1] != line):
                self.history.append(line)
                del self.history[:-self.keep]
            return line
        if k in ("\x7f", "\b"):
            if self.cursor > 0:
                del self.chars[self.cursor - 1]
                self.cursor -= 1
        elif k == DELETE:
            if self.cursor < len(self.chars):
                del self.chars[self.cursor]
        elif k == LEFT:
            self.cursor = max(0, self.cursor - 1)
        elif k == RIGHT:
            self.cursor = min(len(self.chars), self.cursor + 1)
        elif k in (HOME, "\x01"):
            self.cursor = 0
        elif k in (END, "\x05"):
            self.cursor = len(self.chars)
        elif k == "\x15":  # Ctrl+U
            self._set("")
        elif k == UP:
            if self.history:
                if self._browse is None:
                    self._draft = list(self.chars)
                    self._browse = len(self.history)
                self._browse = max(0, self._browse - 1)
                self._set(self.history[self._browse])
        elif k == DOWN:
            if self._browse is not None:
                self._browse += 1
                if self._browse >= len(self.history):
                    self._browse = None
                    self._set("".join(self._draft))
                else:
                    self._set(self.history[self._browse])
        elif len(k) == 1 and k.isprintable() and len(self.chars) < self.limit:
            self.chars.insert(self.cursor, k)
            self.cursor += 1
        return None

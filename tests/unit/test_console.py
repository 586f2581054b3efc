"""Keys from a real pseudo-terminal (UTF-8, escape sequences) and the line editor."""

from __future__ import annotations

import os
import pty
import threading

import pytest

from evc.console import DOWN, END, HOME, LEFT, RIGHT, UP, KeyReader, LineEditor, pump_keys


@pytest.fixture
def tty():
    master, slave = pty.openpty()
    reader = KeyReader(os.fdopen(slave, "rb", buffering=0, closefd=False))
    yield master, reader
    reader.close()
    os.close(master)
    os.close(slave)


def keys(reader: KeyReader, n: int) -> list[str]:
    out = []
    while len(out) < n:
        key = reader.read(1.0)
        assert key, f"only {out} arrived"
        out.append(key)
    return out


def test_utf8_characters_arrive_whole(tty):
    master, reader = tty
    assert reader.is_tty
    os.write(master, "Plaza España €✓".encode())
    assert "".join(keys(reader, 15)) == "Plaza España €✓"


def test_escape_sequences_are_named_keys(tty):
    master, reader = tty
    os.write(master, b"\x1b[A\x1b[B\x1b[C\x1b[D\x1b[H\x1b[F\x1b[3~\x1bOA")
    assert keys(reader, 8) == [UP, DOWN, RIGHT, LEFT, HOME, END, "DELETE", UP]
    os.write(master, b"\x1b")
    assert reader.read(1.0) == "ESC"  # a lone escape
    assert reader.read(0.05) == ""  # nothing else


def test_a_pipe_gives_lines_then_the_end():
    r, w = os.pipe()
    os.write(w, "stop CP-01\nañadir\n".encode())
    os.close(w)
    reader = KeyReader(os.fdopen(r, "rb", buffering=0))
    assert not reader.is_tty
    assert reader.read(1.0) == "stop CP-01"
    assert reader.read(1.0) == "añadir"
    assert reader.read(1.0) is None
    stop = threading.Event()
    got: list[str] = []
    pump_keys(reader, got.append, stop)  # ends at the end of input
    assert got == []


def type_into(editor: LineEditor, *ks: str) -> str | None:
    line = None
    for k in ks:
        line = editor.key(k)
    return line


def test_line_editing_with_cursor_backspace_and_delete():
    editor = LineEditor()
    type_into(editor, *'add CP-11 "Plaza Espana" 0.3')
    assert editor.text == 'add CP-11 "Plaza Espana" 0.3'
    type_into(editor, *[LEFT] * 6, "\x7f", "ñ")  # n -> ñ, in the middle of the line
    assert editor.text == 'add CP-11 "Plaza España" 0.3'
    type_into(editor, HOME, "DELETE", "A", END, "5")
    assert editor.text == 'Add CP-11 "Plaza España" 0.35' and editor.cursor == len(editor.text)
    type_into(editor, "\x15")  # Ctrl+U
    assert editor.text == "" and editor.key(RIGHT) is None


def test_enter_returns_the_line_and_history_recalls_it():
    editor = LineEditor()
    assert type_into(editor, *"stop CP-01", "\r") == "stop CP-01"
    assert type_into(editor, *"resume CP-01", "\n") == "resume CP-01"
    type_into(editor, *"half")
    type_into(editor, UP)
    assert editor.text == "resume CP-01"
    type_into(editor, UP, UP)
    assert editor.text == "stop CP-01"  # the oldest stays
    type_into(editor, DOWN)
    assert editor.text == "resume CP-01"
    type_into(editor, DOWN)
    assert editor.text == "half"  # back to what was being typed
    assert type_into(editor, "\r") == "half"
    assert editor.history == ["stop CP-01", "resume CP-01", "half"]


def test_control_keys_and_overlong_lines_are_not_typed():
    editor = LineEditor(limit=5)
    type_into(editor, "\x07", "ESC", *"abcdefgh")
    assert editor.text == "abcde"
    assert editor.key("\r") == "abcde"
    assert editor.key("\r") == ""  # an empty line
    assert editor.history == ["abcde"]

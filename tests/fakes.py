"""Fakes for unit tests of pure logic (the brain's rules, the board's layout)."""

from __future__ import annotations

from evc.protocol.messages import Message


class FakeOutbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Message, str]] = []

    def send(self, topic: str, message: Message, key: str) -> None:
        self.sent.append((topic, message, key))

    def of(self, kind: type) -> list:
        return [m for _, m, _ in self.sent if isinstance(m, kind)]


class FakeLink:
    def __init__(self) -> None:
        self.sent: list[tuple[int, Message]] = []
        self.closed: list[tuple[int, str, Message | None]] = []

    def send(self, conn_id: int, message: Message) -> None:
        self.sent.append((conn_id, message))

    def close_connection(self, conn_id: int, reason: str, final: Message | None = None) -> None:
        self.closed.append((conn_id, reason, final))


class RecordingView:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str, str]] = []
        self.notes: list[tuple[str, str]] = []

    def changed(self, cp, old, new, why) -> None:
        self.changes.append((cp.cp_id, str(old), str(new), why))

    def note(self, text: str, level: str = "info") -> None:
        self.notes.append((level, text))

    def refresh(self, brain) -> None:
        pass

    def key(self, ch: str):
        return None

"""Fakes for unit tests of pure logic (the brain's rules, the board's layout)."""

from __future__ import annotations

import contextlib

from evc.central.brain import Brain
from evc.protocol.messages import Message


class FakeOutbox:
    """Records what the brain sends; confirms each at once unless told to fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Message, str]] = []
        self.callbacks: list = []
        self.fail_next = 0  # that many sends raise BusError (not even queued)

    def send(self, topic: str, message: Message, key: str, on_done=None) -> None:
        from evc.errors import BusError

        if self.fail_next:
            self.fail_next -= 1
            raise BusError("broker unavailable", retriable=True)
        self.sent.append((topic, message, key))
        if on_done is not None:
            self.callbacks.append((message, on_done))

    def batch(self):
        return contextlib.nullcontext()

    def confirm_all(self, ok: bool = True, *, retriable: bool = True) -> None:
        from evc.errors import BusError

        callbacks, self.callbacks = self.callbacks, []
        for _, on_done in callbacks:
            on_done(None if ok else BusError("timed out", retriable=retriable))

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


class OneEventBatches(Brain):
    """Brain.run with batches of one event: every step is stored, then sent."""

    def apply(self, event):
        super().apply(event)
        self.flush()

    def on_bus(self, msg):
        super().on_bus(msg)
        self.flush()

    def tick(self):
        super().tick()
        self.flush()

"""The shapes that rule modules and their I/O share, and the one send-until-confirmed.

A rule module (central's brain, the engine, the driver) never holds a Kafka client: it
is given a ``Send`` and hears Kafka's verdict through ``Done``, always on its own
thread. ``Unconfirmed`` keeps what it sent until Kafka confirms it: a retriable
failure is sent again (with a backoff), a permanent one (an authorization the broker
refuses, a record too large) is not, and is said once with its cause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn, Protocol

from evc.errors import BusError
from evc.protocol.messages import Message

log = logging.getLogger(__name__)

Done = Callable[[BusError | None], None]
"""``on_done(error)``: Kafka's verdict on one send (None: it took it), called once, from
the producer's I/O thread."""


class Send(Protocol):
    """Queue ``message`` on ``topic`` keyed by ``key``; never blocks on acks. A BusError
    raised here means it was not even queued."""

    def __call__(self, topic: str, message: Message, key: str,
                 on_done: Done | None = None) -> None: ...


class Journal(Protocol):
    """Where a component keeps what must survive it (store.JsonFile, or a dict in tests)."""

    def load(self) -> dict[str, Any]: ...

    def save(self, data: dict[str, Any]) -> None: ...


def assert_never(value: NoReturn) -> NoReturn:
    """The default arm of a ``match`` over a union: mypy fails where a member is not
    handled; at run time it names what slipped through."""
    raise AssertionError(f"unhandled {type(value).__name__}")


class Verdict(Enum):
    CONFIRMED = "confirmed"  # Kafka took it: forget it
    RETRYING = "retrying"  # a passing failure: it is sent again when due
    GAVE_UP = "gave up"  # a permanent failure: not sent again in this run
    UNKNOWN = "unknown"  # not one of ours (already settled)


@dataclass
class Pending:
    """A message on its way to Kafka."""

    topic: str
    message: Message
    key: str
    retry_at: float = 0.0  # monotonic; 0 = in flight (or not sent yet)
    failures: int = 0


class Unconfirmed:
    """Messages sent until Kafka confirms them, owned by one thread.

    ``report(ident, error)`` must hand the verdict back to the owner's thread, which
    calls ``settle``; ``resend_due`` (from the owner's loop) sends again what failed.
    ``sign`` is applied at every send (an engine signs with its newest key).
    """

    def __init__(self, send: Send, report: Callable[[str, BusError | None], None], *,
                 say: Callable[[str], None] | None = None,
                 sign: Callable[[Message], Message] | None = None,
                 first: float = 1.0, most: float = 5.0) -> None:
        self._send = send
        self._report = report
        self._say = say
        self._sign = sign
        self.first = first
        self.most = most
        self.pending: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, ident: str, topic: str, message: Message, key: str) -> None:
        """Remember ``message`` without sending it yet (``send_now`` sends it)."""
        self.pending[ident] = Pending(topic, message, key)

    def submit(self, ident: str, topic: str, message: Message, key: str) -> None:
        self.add(ident, topic, message, key)
        self.send_now(ident)

    def send_now(self, ident: str) -> None:
        p = self.pending.get(ident)
        if p is None:
            return
        p.retry_at = 0.0
        message = self._sign(p.message) if self._sign is not None else p.message
        report = self._report
        try:
            self._send(p.topic, message, p.key, lambda error: report(ident, error))
        except BusError as exc:  # not even queued: the same verdict, the same way back
            report(ident, exc)

    def settle(self, ident: str, error: BusError | None) -> Verdict:
        """Kafka's verdict on ``ident`` (on the owner's thread)."""
        p = self.pending.get(ident)
        if p is None:
            return Verdict.UNKNOWN
        if error is None:
            del self.pending[ident]
            return Verdict.CONFIRMED
        if not error.retriable:
            del self.pending[ident]
            text = f"Kafka refused {p.message.TYPE} for {p.key} for good ({error}); not sent again"
            log.error("%s", text)
            if self._say is not None:
                self._say(text)
            return Verdict.GAVE_UP
        p.failures += 1
        p.retry_at = time.monotonic() + min(self.most, self.first * 2 ** min(p.failures - 1, 4))
        if p.failures == 1:
            log.warning("Kafka did not take %s for %s (%s); it will be sent again",
                        p.message.TYPE, p.key, error)
        return Verdict.RETRYING

    def resend_due(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for ident, p in list(self.pending.items()):
            if p.retry_at and now >= p.retry_at:
                self.send_now(ident)
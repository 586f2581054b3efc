"""What central's brain is given, as it sees it: each port is a Protocol that an I/O
part implements (the TCP server, the Kafka producer, the console board, the files).
Unit tests hand the brain fakes of the same shape."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from evc.ports import Done
from evc.protocol.messages import CPState, Message
from evc.protocol.topics import Delivery

if TYPE_CHECKING:
    from evc.central.brain import Brain
    from evc.central.model import ChargePoint


class Link(Protocol):
    """The TCP side, as the brain sees it (central/server.py implements it)."""

    def send(self, conn_id: int, message: Message) -> None: ...

    def close_connection(self, conn_id: int, reason: str, final: Message | None = None) -> None: ...


class Outbox(Protocol):
    """The Kafka side (bus.Transactions implements it: every batch one transaction; the
    unit tests' FakeOutbox too): queue a message, hear back later.

    ``message`` None is a tombstone: ``key`` removed from a compacted topic.
    """

    def send(self, topic: str, message: Message | None, key: str,
             on_done: Done | None = None) -> None: ...

    def batch(self) -> AbstractContextManager[None]:
        """What is sent (and stored) inside becomes visible together (bus.Transactions)."""
        ...


class Acker(Protocol):
    def ack_all(self, deliveries: list[Delivery]) -> None: ...


class Credentials(Protocol):
    """Where central hands out the secrets it makes (store.credentials.CredentialFiles)."""

    def write(self, ident: str, secret: str) -> Any: ...

    def remove(self, ident: str) -> None: ...


class Audit(Protocol):
    """The append-only record of who did what, from where (store.AuditLog)."""

    def write(self, event: str, **fields: Any) -> None: ...


class Nowhere:
    """Credentials and audit when none is given (unit tests of other rules)."""

    def write(self, *_args: Any, **_fields: Any) -> None:
        return None

    def remove(self, ident: str) -> None:
        return None


class View(Protocol):
    """Where central shows what happens (plain lines or the live board)."""

    def changed(self, cp: ChargePoint, old: CPState | None, new: CPState, why: str) -> None: ...

    def note(self, text: str, level: str = "info") -> None: ...

    def refresh(self, brain: Brain) -> None: ...

    def key(self, ch: str) -> str | None:
        """A key typed at the console; returns a finished line, if any."""
        ...

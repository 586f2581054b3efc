"""What central's I/O threads hand to the brain. Plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

from evc.errors import BusError
from evc.protocol.messages import (
    ChargeRequest,
    ChargerNote,
    ChargerStatus,
    DriverPair,
    DriverPairProve,
    EndRequest,
    EngineRefused,
    FaultReport,
    Heartbeat,
    OperatorCommand,
    PairProve,
    PairStart,
    Prove,
    RecoveryReport,
    Register,
    Telemetry,
)
from evc.protocol.topics import Delivery

MonitorMessage = (Register | Prove | Heartbeat | FaultReport | RecoveryReport | EngineRefused
                  | PairStart | PairProve
                  | ChargerStatus | ChargerNote)
"""What a monitor may say to central (the server refuses any other type:
messages.TCP_CENTRAL_TYPES)."""

CentralRecord = (ChargeRequest | EndRequest | Telemetry | DriverPair | DriverPairProve
                 | OperatorCommand)
"""What central applies from requests_topic, telemetry_topic and operator_topic (any other
type is skipped as a BusSkipped)."""
CENTRAL_RECORD_TYPES = (ChargeRequest, EndRequest, Telemetry, DriverPair, DriverPairProve,
                        OperatorCommand)


@dataclass(frozen=True)
class MonitorFrame:
    """A valid frame from monitor connection ``conn_id``."""

    conn_id: int
    peer: str
    message: MonitorMessage


@dataclass(frozen=True)
class Heartbeats:
    """Heartbeats of registered connections since the last such event, as (conn_id,
    cp_id) pairs, heard by wall-clock time ``at``. The server acknowledges each at once
    and reports them together a few times a second: thousands of monitors beating each
    second are not thousands of events for the brain. (A connection's own silence is the
    server's to judge; a heartbeat of an unregistered connection is a MonitorFrame.)"""

    beats: tuple[tuple[int, str], ...]
    at: float


@dataclass(frozen=True)
class ConnectionLost:
    """Connection ``conn_id`` is gone (closed, broken, silent or malformed)."""

    conn_id: int
    peer: str
    reason: str


@dataclass(frozen=True)
class BusMessage:
    """A record from requests_topic or telemetry_topic."""

    message: CentralRecord
    delivery: Delivery


@dataclass(frozen=True)
class BusSkipped:
    """A malformed record: nothing to apply, but its offset counts as read."""

    delivery: Delivery
    error: str


@dataclass(frozen=True)
class BusRecords:
    """What one poll of central's consumer read, in the order read: one event for the
    brain, not one per record (each is a hand-over between threads)."""

    records: tuple[BusMessage | BusSkipped, ...]


@dataclass(frozen=True)
class Sent:
    """Kafka's verdict on a message central sent (``error`` None: Kafka took it).

    ``msg_id`` names an outbox message; ``status_of`` a CP's public state; neither: a
    heartbeat.
    """

    msg_id: str | None
    error: BusError | None = None
    status_of: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Verdicts:
    """Kafka gave verdicts (``Sent``) on what central sent: the brain takes them all from
    its Announcer. One such event stands for all that arrived before the brain took them
    (a transaction confirms every message in it at once)."""


@dataclass(frozen=True)
class OperatorLine:
    """One line typed by the operator."""

    text: str


@dataclass(frozen=True)
class OperatorKey:
    """One key pressed at the board's prompt (the view assembles lines)."""

    key: str


Event = (MonitorFrame | Heartbeats | ConnectionLost | BusMessage | BusSkipped | BusRecords
         | Verdicts | OperatorLine | OperatorKey)

"""What central's I/O threads hand to the brain. Plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

from evc.bus import Delivery
from evc.protocol.messages import Message


@dataclass(frozen=True)
class MonitorFrame:
    """A valid frame from monitor connection ``conn_id``."""

    conn_id: int
    peer: str
    message: Message


@dataclass(frozen=True)
class ConnectionLost:
    """Connection ``conn_id`` is gone (closed, broken, silent or malformed)."""

    conn_id: int
    peer: str
    reason: str


@dataclass(frozen=True)
class BusMessage:
    """A record from requests_topic or telemetry_topic."""

    message: Message
    delivery: Delivery


@dataclass(frozen=True)
class OperatorLine:
    """One line typed by the operator."""

    text: str


@dataclass(frozen=True)
class OperatorKey:
    """One key pressed at the board's prompt (the view assembles lines)."""

    key: str


@dataclass(frozen=True)
class Shutdown:
    """The console asked to quit."""


Event = MonitorFrame | ConnectionLost | BusMessage | OperatorLine | OperatorKey | Shutdown

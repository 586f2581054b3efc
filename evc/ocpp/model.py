"""The gateway's state, as plain data: each connected charger, the transactions its
chargers started, the starts central ordered (gateway.py and orders.py change them)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from evc.ocpp.link import CentralLink
from evc.ocpp.ocppj import OcppError

CALL_FAILED = (OcppError, TimeoutError, ConnectionError)
"""What a CALL to a charger may end in instead of its answer: a CALLERROR (or an answer
against its schema), no answer in time, the charger gone."""


class Charger(Protocol):
    """One charger's WebSocket, as the rules see it (server.py's ``Connection``)."""

    cp_id: str

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass
class Tx:
    """A transaction the charger started: its session at central and its meter."""

    tx_id: int
    cp_id: str
    session_id: str  # "" : refused by central (the charger is told to stop it)
    driver_id: str
    price: float
    meter_start: float  # Wh
    started: str  # the charger's timestamp (with meterStart: a repeated start is the same)
    last_wh: float = 0.0
    kw: float | None = None  # what the charger says it draws (None: not said yet)
    power_order: str = ""
    ended: bool = False
    end_reason: str = ""  # decided by central (an end order), "" until then

    @property
    def kwh(self) -> float:
        return round(max(0.0, self.last_wh - self.meter_start) / 1000, 4)


@dataclass
class Expected:
    """A start central ordered, waiting for the charger's StartTransaction."""

    session_id: str
    driver_id: str
    price: float
    order_id: str
    kw: float | None
    card: bool = False  # asked with a card at the charger (no remote start sent)
    at: float = field(default_factory=time.monotonic)


@dataclass
class Live:
    """A connected charger."""

    conn: Charger
    link: CentralLink
    status: str = ""  # its connector's last status
    faulted: bool = False
    availability: str = ""  # the last ChangeAvailability it accepted
    booted: bool = False
    expected: Expected | None = None
    cards: dict[str, asyncio.Future[str]] = field(default_factory=dict)  # idTag -> status
    asked: dict[str, str] = field(default_factory=dict)  # request id -> idTag


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

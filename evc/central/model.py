"""Central's state, as plain data: charge points, sessions, the settings of its rules.

The brain (brain.py) owns and changes it; the standby (standby.py) and the board
(board.py) read the same shapes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from evc.protocol.codes import DEFAULT_MAX_KW, DEFAULT_SPEED
from evc.protocol.messages import CPState, EndReason, Register

DEFAULT_PRICE = 0.35


class Wait(Enum):
    """What a session's deadline waits for."""

    START = "start"  # the engine's first telemetry after the start order
    FINAL = "final"  # the engine's final telemetry after the end was decided
    MONITOR = "monitor"  # after a central restart: the CP's monitor registering again


@dataclass
class Session:
    session_id: str
    cp_id: str
    driver_id: str
    request_id: str
    price: float
    started_at: float  # wall clock
    kwh: float = 0.0
    eur: float = 0.0
    supplying: bool = False  # the engine has sent telemetry
    end_reason: EndReason | None = None  # set when the end is decided
    waiting: Wait | None = None
    deadline: float = 0.0  # monotonic: what ``waiting`` names must happen by then
    # Power (power.py), for a CP on a site with a limit. kW; None: no limit (its maximum).
    ev_max_kw: float = 0.0  # the EV's own request (0: none)
    target_kw: float | None = None  # its share by the last allocation
    sent_kw: float | None = None  # the share last ordered to its engine
    granted_kw: float = 0.0  # the most its engine may be drawing (what the site counts)
    kw: float = 0.0  # what its engine last reported
    sent_order: str = ""  # the msg_id of the last power order sent (a reading naming it obeyed)
    power_seq: int = 0  # the last set_power's seq (each one a newer share than the last)

    def wait(self, what: Wait | None, seconds: float = 0.0) -> None:
        self.waiting = what
        self.deadline = time.monotonic() + seconds if what is not None else 0.0

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Session:
        """A session as the store holds it (``record``)."""
        reason = rec.get("end_reason")
        return cls(
            session_id=rec["session_id"], cp_id=rec["cp_id"], driver_id=rec["driver_id"],
            request_id=rec.get("request_id", ""), price=float(rec.get("price_eur_kwh", 0.0)),
            started_at=float(rec.get("started_at", 0.0)), kwh=rec.get("consumo_kwh", 0.0),
            eur=rec.get("importe_eur", 0.0), supplying=bool(rec.get("supplying", True)),
            end_reason=reason_of(reason) if reason else None,
            ev_max_kw=float(rec.get("ev_max_kw", 0.0)), sent_kw=rec.get("sent_kw"),
            granted_kw=float(rec.get("granted_kw", 0.0)),
            sent_order=str(rec.get("sent_order", "")), kw=float(rec.get("kw", 0.0)),
            power_seq=int(rec.get("power_seq", 0)))

    def record(self, **extra: Any) -> dict[str, Any]:
        return {
            "session_id": self.session_id, "cp_id": self.cp_id, "driver_id": self.driver_id,
            "request_id": self.request_id, "price_eur_kwh": self.price,
            "started_at": self.started_at, "consumo_kwh": self.kwh, "importe_eur": self.eur,
            "supplying": self.supplying,
            "end_reason": str(self.end_reason) if self.end_reason else None,
            "ev_max_kw": self.ev_max_kw, "sent_kw": self.sent_kw, "granted_kw": self.granted_kw,
            "sent_order": self.sent_order, "power_seq": self.power_seq,
            **extra,
        }


@dataclass
class ChargePoint:
    cp_id: str
    location: str
    price: float
    stopped: bool = False
    conn_id: int | None = None
    peer: str = ""
    faulted: bool = False
    fault_reason: str = ""
    last_seen: float | None = None  # wall clock
    session: Session | None = None
    state: CPState = CPState.DESCONECTADO  # cached derive(); updated by Brain._refresh_cp
    presumed_until: float = 0.0  # monotonic: the last known state is shown until then
    secret: str = ""  # its credential ("" = revoked: it cannot register at the auth level)
    keys: dict[str, str] = field(default_factory=dict)  # kid -> Kafka key (newest last)
    site: str = ""  # the site whose limit it shares ("": none)
    max_kw: float = DEFAULT_MAX_KW  # what its engine can supply (said at registration)
    # Its monitor proved the credential: from then on central signs its orders, wants its
    # readings signed and never serves it unproven again (no downgrade) until revoked.
    proven: bool = False
    via: str = ""  # "ocpp": an OCPP charger behind a gateway (said at registration)
    charger_status: str = ""  # an OCPP charger's last StatusNotification, in words

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> ChargePoint:
        """A registry entry as the store holds it (not connected: that is not stored)."""
        return cls(
            cp_id=rec["cp_id"], location=rec.get("location", ""),
            price=float(rec.get("price_eur_kwh", DEFAULT_PRICE)),
            stopped=bool(rec.get("stopped", False)), last_seen=rec.get("last_seen"),
            secret=str(rec.get("secret", "")), keys=dict(rec.get("keys", {})),
            proven=bool(rec.get("proven", False)), site=str(rec.get("site", "")),
            max_kw=float(rec.get("max_kw", DEFAULT_MAX_KW)), via=str(rec.get("via", "")))

    def stored_state(self, rec: dict[str, Any]) -> CPState:
        """The state the store last showed for this CP (Desconectado if unreadable)."""
        try:
            return CPState(rec.get("state", CPState.DESCONECTADO))
        except ValueError:
            return CPState.DESCONECTADO

    def public_detail(self) -> str:
        """Why it is out, in public words (network_topic's ``detail``); an OCPP charger's
        own status otherwise."""
        if self.state is CPState.AVERIADO:
            return self.fault_reason
        if self.state is CPState.PARADO:
            return "stopped by the operator"
        return self.charger_status if self.state is not CPState.DESCONECTADO else ""

    def derive(self) -> CPState:
        return CPState.of(connected=self.conn_id is not None, faulted=self.faulted,
                          stopped=self.stopped, supplying=self.session is not None)


@dataclass(frozen=True)
class Settings:
    request_ttl: float = 30.0  # older requests are answered "expired"
    start_timeout: float = 5.0  # engine must send telemetry this soon after the start order
    final_timeout: float = 20.0  # and its final telemetry this soon after an end order
    resume_grace: float = 15.0  # after a restart, monitors of open sessions must be back
    max_supply: float = 3600.0  # a supply nobody ends is ended after this long (0: never)
    bus_timeout: float = 3.0  # no confirmation from Kafka this long: Kafka is unavailable
    secure: bool = True  # the authenticated level; False: the open level (docs/SECURITY.md)
    max_rate: float = 1.0  # kWh a CP can add per second: a faster reading is implausible
    speed: float = DEFAULT_SPEED  # the simulation clock (engines' --speed): scales max_rate
    min_kw: float = 4.2  # a share under this waits (6 A on three phases)
    heartbeat: float = 1.0  # central's liveness record on network_topic
    batch: int = 500
    tick: float = 0.2


@dataclass
class PendingRegistration:
    """A monitor that said who it is and was challenged to prove it."""

    cp_id: str
    peer: str
    register: Register
    nonce: str  # central's


@dataclass
class Counters:
    requests: int = 0
    authorized: int = 0
    denied: int = 0
    tickets: int = 0
    internal_errors: int = 0


def reason_of(text: str) -> EndReason:
    """A stored or received reason; one this version does not know reads as unplugged."""
    try:
        return EndReason(text)
    except ValueError:
        return EndReason.UNPLUGGED

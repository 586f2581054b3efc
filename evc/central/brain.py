"""Every rule of the charging network, applied by one thread that owns all state.

I/O threads (TCP server, Kafka consumer, console) only put events on
``Brain.events``; ``Brain.run`` takes them in batches, applies the rules below,
writes the store once per batch, and only then acknowledges the Kafka records
(so a restarted central resumes after the last message it applied).

A charge point's state is derived, never stored twice:

    no live monitor             -> Desconectado  (grey)
    monitor reports a fault     -> Averiado      (red)
    stopped by the operator     -> Parado        (orange; a persisted flag)
    a session is running        -> Suministrando (green, with driver, kWh, €)
    otherwise                   -> Activado      (green)

Any exit from a supply ends its session exactly once: the engine is told to
end, its final telemetry gives the figures, and one ticket goes to the driver
(if the final telemetry never arrives, the last figures seen are billed).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from evc.bus import CONTROL, Delivery
from evc.central import admin
from evc.central.events import (
    BusMessage,
    ConnectionLost,
    Event,
    MonitorFrame,
    OperatorKey,
    OperatorLine,
    Shutdown,
)
from evc.errors import BusError
from evc.protocol.messages import (
    Authorization,
    ChargeRequest,
    CPState,
    EndReason,
    EndRequest,
    EndSupply,
    FaultReport,
    Health,
    Heartbeat,
    Message,
    RecoveryReport,
    Register,
    RegisterAccepted,
    RegisterRejected,
    ResumeCP,
    StartSupply,
    StopCP,
    Telemetry,
    Ticket,
    new_id,
)
from evc.store import Store

log = logging.getLogger(__name__)

DEFAULT_PRICE = 0.35


# ---------------------------------------------------------------------- ports


class Link(Protocol):
    """The TCP side, as the brain sees it (central/server.py implements it)."""

    def send(self, conn_id: int, message: Message) -> None: ...

    def close_connection(self, conn_id: int, reason: str, final: Message | None = None) -> None: ...


class Outbox(Protocol):
    """The Kafka side: ``send(topic, message, key)`` (bus.KafkaBus implements it)."""

    def send(self, topic: str, message: Message, key: str) -> None: ...


class Acker(Protocol):
    def ack(self, delivery: Delivery) -> None: ...


class View(Protocol):
    """Where central shows what happens (plain lines or the live board)."""

    def changed(self, cp: ChargePoint, old: CPState | None, new: CPState, why: str) -> None: ...

    def note(self, text: str, level: str = "info") -> None: ...

    def refresh(self, brain: Brain) -> None: ...

    def key(self, ch: str) -> str | None:
        """A key typed at the console; returns a finished line, if any."""
        ...


# ---------------------------------------------------------------------- state


@dataclass
class Session:
    session_id: str
    cp_id: str
    driver_id: str
    request_id: str
    price: float
    started_at: float
    kwh: float = 0.0
    eur: float = 0.0
    supplying: bool = False  # the engine has sent telemetry
    end_reason: EndReason | None = None  # set when the end is decided
    deadline: float = 0.0  # monotonic: start or end must be confirmed by then

    def record(self, **extra: Any) -> dict[str, Any]:
        return {
            "session_id": self.session_id, "cp_id": self.cp_id, "driver_id": self.driver_id,
            "request_id": self.request_id, "price_eur_kwh": self.price,
            "started_at": self.started_at, "consumo_kwh": self.kwh, "importe_eur": self.eur,
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

    def derive(self) -> CPState:
        if self.conn_id is None:
            return CPState.DESCONECTADO
        if self.faulted:
            return CPState.AVERIADO
        if self.stopped:
            return CPState.PARADO
        if self.session is not None:
            return CPState.SUMINISTRANDO
        return CPState.ACTIVADO


@dataclass
class Settings:
    request_ttl: float = 30.0  # older requests are answered "expired"
    start_timeout: float = 5.0  # engine must send telemetry this soon after the start order
    end_timeout: float = 3.0  # and its final telemetry this soon after an end order
    batch: int = 500
    tick: float = 0.2


@dataclass
class Counters:
    requests: int = 0
    authorized: int = 0
    denied: int = 0
    tickets: int = 0


# ---------------------------------------------------------------------- the brain


class Brain:
    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        link: Link,
        view: View,
        settings: Settings | None = None,
        events: queue.Queue[Event] | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.link = link
        self.view = view
        self.settings = settings or Settings()
        self.events: queue.Queue[Event] = events if events is not None else queue.Queue()
        self.acker: Acker | None = None
        self.cps: dict[str, ChargePoint] = {}
        self.by_conn: dict[int, str] = {}
        self.sessions: dict[str, Session] = {}
        self.answered: OrderedDict[str, None] = OrderedDict()
        self.counters = Counters()
        self.quit_requested = threading.Event()
        self._outgoing: list[tuple[str, Message, str]] = []
        self._load()

    # ------------------------------------------------------------------ start-up
    def _load(self) -> None:
        for rec in self.store.cps():
            self.cps[rec["cp_id"]] = ChargePoint(
                cp_id=rec["cp_id"], location=rec.get("location", ""),
                price=float(rec.get("price_eur_kwh", DEFAULT_PRICE)),
                stopped=bool(rec.get("stopped", False)), last_seen=rec.get("last_seen"),
            )
        # After a restart every CP is Desconectado until its monitor registers again.
        for cp in self.cps.values():
            self.store.put_cp({"cp_id": cp.cp_id, "state": str(CPState.DESCONECTADO)})
        # Requests that already got a session are never answered twice, even when Kafka
        # delivers them again after a restart.
        for rec in self.store.sessions():
            if rec.get("request_id"):
                self.answered[rec["request_id"]] = None
        # Sessions that were running when central stopped: end them now, billing what
        # the engine reports in its final telemetry (if it is still there).
        for rec in self.store.sessions(status="open"):
            session = Session(
                session_id=rec["session_id"], cp_id=rec["cp_id"], driver_id=rec["driver_id"],
                request_id=rec.get("request_id", ""), price=rec["price_eur_kwh"],
                started_at=rec["started_at"], kwh=rec.get("consumo_kwh", 0.0),
                eur=rec.get("importe_eur", 0.0), supplying=True,
            )
            self.sessions[session.session_id] = session
            cp = self.cps.get(session.cp_id)
            if cp is not None:
                cp.session = session
            self._end_session(session, EndReason.CENTRAL_RESTART)
        self.flush()

    def upsert_cp(self, cp_id: str, location: str, price: float) -> None:
        """Registry entry from --cps or the console: add or update, keep the rest."""
        cp = self.cps.get(cp_id)
        if cp is None:
            cp = self.cps[cp_id] = ChargePoint(cp_id, location, price)
        else:
            cp.location, cp.price = location, price
        self._save_cp(cp)

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event) -> None:
        """Apply events until ``stop``; the caller's threads feed ``self.events``."""
        next_tick = 0.0
        while not stop.is_set():
            timeout = max(0.0, next_tick - time.monotonic())
            batch: list[Event] = []
            try:
                batch.append(self.events.get(timeout=timeout))
                while len(batch) < self.settings.batch:
                    batch.append(self.events.get_nowait())
            except queue.Empty:
                pass
            deliveries = [self.apply(event) for event in batch]
            if time.monotonic() >= next_tick:
                self.tick()
                next_tick = time.monotonic() + self.settings.tick
            self.flush()
            if self.acker is not None:
                for delivery in deliveries:
                    if delivery is not None:
                        self.acker.ack(delivery)
            if self.quit_requested.is_set():
                stop.set()

    def _emit(self, topic: str, message: Message, key: str) -> None:
        """Queue a Kafka message; ``flush`` sends it once the batch is stored."""
        self._outgoing.append((topic, message, key))

    def flush(self) -> None:
        """Store the batch, then announce it: nothing is said that a crash could unsay."""
        self.store.commit()
        outgoing, self._outgoing = self._outgoing, []
        try:
            for topic, message, key in outgoing:
                self.outbox.send(topic, message, key)
        except BusError as exc:
            self.view.note(f"Kafka: {exc}", "error")

    def apply(self, event: Event) -> Delivery | None:
        """One event; returns the Kafka delivery to acknowledge once stored."""
        if isinstance(event, MonitorFrame):
            self.on_frame(event)
        elif isinstance(event, ConnectionLost):
            self.on_connection_lost(event.conn_id, event.reason)
        elif isinstance(event, BusMessage):
            self.on_bus(event.message)
            return event.delivery
        elif isinstance(event, OperatorLine):
            self.on_operator(event.text)
        elif isinstance(event, OperatorKey):
            line = self.view.key(event.key)
            if line is not None:
                self.on_operator(line)
        elif isinstance(event, Shutdown):
            self.quit_requested.set()
        return None

    def tick(self) -> None:
        """Deadlines: engines that never started, final telemetry that never came."""
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if session.deadline and now > session.deadline:
                if session.end_reason is None:
                    self._end_session(session, EndReason.NO_ENGINE)
                else:
                    self.view.note(
                        f"{session.cp_id}: no final telemetry from the engine; billing the "
                        f"last figures seen ({session.kwh:.2f} kWh)", "warning")
                    self._close_session(session, session.end_reason)
        self.view.refresh(self)

    # ------------------------------------------------------------------ monitors (TCP)
    def on_frame(self, event: MonitorFrame) -> None:
        msg = event.message
        cp_id = self.by_conn.get(event.conn_id)
        if cp_id is None:
            if isinstance(msg, Register):
                self.on_register(event.conn_id, event.peer, msg)
            else:
                self.link.close_connection(
                    event.conn_id, "spoke before registering",
                    RegisterRejected(cp_id=getattr(msg, "cp_id", "?"),
                                     reason="register first", code="protocol"))
            return
        cp = self.cps[cp_id]
        if isinstance(msg, Register) or getattr(msg, "cp_id", cp_id) != cp_id:
            self.link.close_connection(
                event.conn_id, f"monitor of {cp_id} spoke for another CP",
                RegisterRejected(cp_id=cp_id, reason="one connection serves one CP",
                                 code="protocol"))
            return
        cp.last_seen = time.time()
        if isinstance(msg, Heartbeat):
            return
        if isinstance(msg, FaultReport):
            self.on_fault(cp, msg.reason or "engine fault")
        elif isinstance(msg, RecoveryReport):
            self.on_recovered(cp)

    def on_register(self, conn_id: int, peer: str, msg: Register) -> None:
        cp = self.cps.get(msg.cp_id)
        if cp is None:
            self.view.note(f"refused monitor at {peer}: {msg.cp_id} is not in the registry",
                           "warning")
            self.link.close_connection(conn_id, f"unknown CP {msg.cp_id}", RegisterRejected(
                cp_id=msg.cp_id, code="unknown",
                reason=f"{msg.cp_id} is not in central's registry"))
            return
        if cp.conn_id is not None:
            self.view.note(f"refused second monitor for {cp.cp_id} at {peer} "
                           f"(connected from {cp.peer})", "warning")
            self.link.close_connection(conn_id, f"duplicate monitor for {cp.cp_id}",
                                       RegisterRejected(
                cp_id=cp.cp_id, code="duplicate",
                reason=f"{cp.cp_id} is already connected from another monitor"))
            return
        before = cp.state
        cp.conn_id, cp.peer, cp.last_seen = conn_id, peer, time.time()
        self.by_conn[conn_id] = cp.cp_id
        if msg.location and msg.location != cp.location:
            cp.location = msg.location
        cp.faulted = msg.health is Health.KO
        cp.fault_reason = "engine KO at registration" if cp.faulted else ""
        self.link.send(conn_id, RegisterAccepted(
            cp_id=cp.cp_id, location=cp.location, price_eur_kwh=cp.price))
        # Tell the engine its operator mode, so a restarted engine learns it.
        mode: Message = StopCP(cp_id=cp.cp_id) if cp.stopped else ResumeCP(cp_id=cp.cp_id)
        self._emit(CONTROL, mode, cp.cp_id)
        self._refresh_cp(cp, f"monitor registered from {peer}", before)

    def on_connection_lost(self, conn_id: int, reason: str) -> None:
        cp_id = self.by_conn.pop(conn_id, None)
        if cp_id is None:
            return
        cp = self.cps.get(cp_id)
        if cp is None or cp.conn_id != conn_id:
            return
        before = cp.state
        cp.conn_id = None
        if cp.session is not None:
            self._end_session(cp.session, EndReason.DISCONNECTED)
        self._refresh_cp(cp, reason, before)

    def on_fault(self, cp: ChargePoint, reason: str) -> None:
        before = cp.state
        cp.faulted, cp.fault_reason = True, reason
        if cp.session is not None:
            self._end_session(cp.session, EndReason.FAULT)
        self._refresh_cp(cp, f"AVERÍA: {reason}", before)

    def on_recovered(self, cp: ChargePoint) -> None:
        before = cp.state
        cp.faulted, cp.fault_reason = False, ""
        self._refresh_cp(cp, "engine OK again", before)

    # ------------------------------------------------------------------ Kafka
    def on_bus(self, msg: Message) -> None:
        if isinstance(msg, ChargeRequest):
            self.on_charge_request(msg)
        elif isinstance(msg, EndRequest):
            self.on_end_request(msg)
        elif isinstance(msg, Telemetry):
            self.on_telemetry(msg)
        else:
            log.warning("ignoring %s on central's topics", msg.TYPE)

    def on_charge_request(self, req: ChargeRequest) -> None:
        if req.msg_id in self.answered:
            log.info("duplicate request %s from %s ignored", req.msg_id, req.driver_id)
            return
        self.answered[req.msg_id] = None
        while len(self.answered) > 100_000:
            self.answered.popitem(last=False)
        self.counters.requests += 1
        reason = self._refusal(req)
        if reason is not None:
            self.counters.denied += 1
            self._emit(CONTROL, Authorization(
                driver_id=req.driver_id, cp_id=req.cp_id, request_id=req.msg_id,
                authorized=False, reason=reason), req.driver_id)
            self.view.note(f"denied {req.driver_id} at {req.cp_id}: {reason}")
            return
        cp = self.cps[req.cp_id]
        before = cp.state
        session = Session(
            session_id=new_id(), cp_id=cp.cp_id, driver_id=req.driver_id,
            request_id=req.msg_id, price=cp.price, started_at=time.time(),
            deadline=time.monotonic() + self.settings.start_timeout,
        )
        self.sessions[session.session_id] = session
        cp.session = session
        self.store.put_session(session.record(status="open"))
        self._emit(CONTROL, StartSupply(
            cp_id=cp.cp_id, driver_id=req.driver_id, session_id=session.session_id,
            price_eur_kwh=cp.price), cp.cp_id)
        self._emit(CONTROL, Authorization(
            driver_id=req.driver_id, cp_id=cp.cp_id, request_id=req.msg_id, authorized=True,
            reason="authorized: plug in your vehicle", session_id=session.session_id,
            price_eur_kwh=cp.price), req.driver_id)
        self.counters.authorized += 1
        self._refresh_cp(cp, f"supply authorized for {req.driver_id}", before)

    def _refusal(self, req: ChargeRequest) -> str | None:
        """Why ``req`` cannot be authorized, or None: the only place that decides."""
        age = time.time() - req.ts
        if age > self.settings.request_ttl:
            return f"request expired ({age:.0f} s old)"
        cp = self.cps.get(req.cp_id)
        if cp is None:
            return f"unknown charge point {req.cp_id}"
        for session in self.sessions.values():
            if session.driver_id == req.driver_id and session.end_reason is None:
                return f"driver {req.driver_id} already has a supply running at {session.cp_id}"
        state = cp.state
        if state is CPState.ACTIVADO:
            return None
        return {
            CPState.DESCONECTADO: f"{cp.cp_id} is disconnected",
            CPState.AVERIADO: f"{cp.cp_id} is out of service (fault)",
            CPState.PARADO: f"{cp.cp_id} is stopped by the operator (out of order)",
            CPState.SUMINISTRANDO: f"{cp.cp_id} is busy",
        }[state]

    def on_end_request(self, req: EndRequest) -> None:
        session = self.sessions.get(req.session_id)
        if session is None or session.driver_id != req.driver_id or session.cp_id != req.cp_id:
            log.info("end request for unknown or finished session %s ignored", req.session_id)
            return
        self._end_session(session, EndReason.FINISHED)

    def on_telemetry(self, t: Telemetry) -> None:
        session = self.sessions.get(t.session_id)
        if session is None or session.cp_id != t.cp_id:
            log.debug("telemetry for no running session (%s %s) ignored", t.cp_id, t.session_id)
            return
        session.kwh, session.eur = t.consumo_kwh, t.importe_eur
        if not session.supplying:
            session.supplying = True
            if session.end_reason is None:
                session.deadline = 0.0
        if t.final:
            reason = session.end_reason or _reason(t.reason)
            self._close_session(session, reason)

    # ------------------------------------------------------------------ sessions
    def _end_session(self, session: Session, reason: EndReason) -> None:
        """Decide the end of a supply: order the engine to stop, await its final figures."""
        if session.end_reason is not None:
            return
        session.end_reason = reason
        session.deadline = time.monotonic() + self.settings.end_timeout
        self._emit(CONTROL, EndSupply(
            cp_id=session.cp_id, session_id=session.session_id, reason=reason), session.cp_id)

    def _close_session(self, session: Session, reason: EndReason) -> None:
        """The supply is over: one ticket, the session stored as closed, the CP freed."""
        if self.sessions.pop(session.session_id, None) is None:
            return
        ended = time.time()
        ticket = Ticket(
            driver_id=session.driver_id, cp_id=session.cp_id, session_id=session.session_id,
            consumo_kwh=session.kwh, importe_eur=session.eur, price_eur_kwh=session.price,
            started_at=session.started_at, ended_at=ended, reason=reason)
        self._emit(CONTROL, ticket, session.driver_id)
        self.counters.tickets += 1
        self.store.put_session(session.record(
            status="closed", ended_at=ended, reason=str(reason), ticket_id=ticket.msg_id))
        self.view.note(f"ticket to {session.driver_id} for {session.cp_id}: "
                       f"{session.kwh:.2f} kWh, {session.eur:.2f} € ({reason})")
        cp = self.cps.get(session.cp_id)
        if cp is not None and cp.session is session:
            before = cp.state
            cp.session = None
            self._refresh_cp(cp, f"supply ended ({reason})", before)

    # ------------------------------------------------------------------ operator
    def on_operator(self, line: str) -> None:
        try:
            command = admin.parse_command(line)
        except admin.CommandError as exc:
            self.view.note(str(exc), "error")
            return
        if command is None:
            return
        if isinstance(command, admin.Help):
            self.view.note(admin.HELP)
        elif isinstance(command, admin.Quit):
            self.quit_requested.set()
        elif isinstance(command, admin.Add):
            existed = command.cp_id in self.cps
            self.upsert_cp(command.cp_id, command.location, command.price)
            self.view.note(f"{'updated' if existed else 'registered'} {command.cp_id} at "
                           f"{command.location}, {command.price:.2f} €/kWh")
        elif isinstance(command, (admin.Stop, admin.Resume, admin.Remove, admin.SetPrice)):
            targets = self._targets(command.cp_id)
            if targets is None:
                return
            for cp in targets:
                if isinstance(command, admin.Stop):
                    self.stop_cp(cp)
                elif isinstance(command, admin.Resume):
                    self.resume_cp(cp)
                elif isinstance(command, admin.Remove):
                    self.remove_cp(cp)
                else:
                    cp.price = command.price
                    self._save_cp(cp)
                    self.view.note(f"{cp.cp_id} now costs {cp.price:.2f} €/kWh "
                                   "(from the next supply)")

    def _targets(self, cp_id: str | None) -> list[ChargePoint] | None:
        if cp_id is None:
            return list(self.cps.values())
        cp = self.cps.get(cp_id)
        if cp is None:
            self.view.note(f"unknown charge point {cp_id!r}; nothing changed", "error")
            return None
        return [cp]

    def stop_cp(self, cp: ChargePoint) -> None:
        before = cp.state
        cp.stopped = True
        self._emit(CONTROL, StopCP(cp_id=cp.cp_id), cp.cp_id)
        if cp.session is not None:
            self._end_session(cp.session, EndReason.STOPPED)
        self._refresh_cp(cp, "stopped by the operator", before)
        if cp.state is before:
            self.view.note(f"{cp.cp_id} stopped; it shows {before} until that clears, "
                           "then Parado")

    def resume_cp(self, cp: ChargePoint) -> None:
        before = cp.state
        cp.stopped = False
        self._emit(CONTROL, ResumeCP(cp_id=cp.cp_id), cp.cp_id)
        self._refresh_cp(cp, "resumed by the operator", before)
        if cp.state is before:
            self.view.note(f"{cp.cp_id} resumed; it shows {before}")

    def remove_cp(self, cp: ChargePoint) -> None:
        if cp.conn_id is not None or cp.session is not None:
            self.view.note(f"{cp.cp_id} is connected; stop its monitor before removing it",
                           "error")
            return
        del self.cps[cp.cp_id]
        self.store.remove_cp(cp.cp_id)
        self.view.note(f"removed {cp.cp_id} from the registry")

    # ------------------------------------------------------------------ helpers
    def _save_cp(self, cp: ChargePoint) -> None:
        self.store.put_cp({
            "cp_id": cp.cp_id, "location": cp.location, "price_eur_kwh": cp.price,
            "stopped": cp.stopped, "state": str(cp.state), "last_seen": cp.last_seen,
        })

    def _refresh_cp(self, cp: ChargePoint, why: str, before: CPState) -> None:
        cp.state = cp.derive()
        self._save_cp(cp)
        if cp.state is not before:
            self.view.changed(cp, before, cp.state, why)

    def counts(self) -> dict[CPState, int]:
        out = {state: 0 for state in CPState}
        for cp in self.cps.values():
            out[cp.state] += 1
        return out


def _reason(text: str) -> EndReason:
    try:
        return EndReason(text)
    except ValueError:
        return EndReason.UNPLUGGED

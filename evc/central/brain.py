"""The rules of the charging network, applied by one thread that owns all state.

I/O threads (TCP server, Kafka consumer, console, the producer's callbacks)
only put events on ``Brain.events``; ``Brain.run`` takes them in batches,
applies the rules, and then (announce.py) commits the store once, the batch's
state with the messages it decided and how far it read each Kafka partition,
and only then sends those messages: nothing is announced that a crash could
forget, nothing decided is lost, and no record is applied twice.

Here: the loop, charge requests, telemetry, supplies and tickets, the operator's
stop and resume. Beside it, with the same brain: admission.py (what
is authorized, whose request is its own, which reading can be true), monitors.py (the
TCP side: registration, heartbeats, faults, lost connections), operator.py (the
console's commands), pairing.py, power.py (site limits), restore.py (taking up the
stored state at start), ticks.py (the deadlines and what else each tick does).

A charge point's state is derived, never stored twice:

    no live monitor             -> Desconectado  (grey)
    monitor reports a fault     -> Averiado      (red)
    stopped by the operator     -> Parado        (orange; a persisted flag)
    a session is running        -> Suministrando (green, with driver, kWh, €)
    otherwise                   -> Activado      (green)

Any exit from a supply ends its session exactly once: the engine is told to
end, its final telemetry gives the figures, and one ticket goes to the driver.
If the final telemetry never comes (the engine died and did not return within
``final_timeout``), the last figures seen are billed. A restarted central
resumes its open sessions: charge points go on supplying while it is away.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import OrderedDict

from evc.central import (
    admission,
    monitors,
    operator,
    operators,
    pairing,
    power,
    restore,
    ticks,
)
from evc.central.announce import Announcer
from evc.central.events import (
    BusMessage,
    BusRecords,
    BusSkipped,
    CentralRecord,
    ConnectionLost,
    Event,
    Heartbeats,
    MonitorFrame,
    OperatorKey,
    OperatorLine,
    Sent,
    Verdicts,
)
from evc.central.model import (
    ChargePoint,
    Counters,
    PendingRegistration,
    Session,
    Settings,
    Wait,
    reason_of,
)
from evc.central.ports import Audit, Credentials, Link, Nowhere, Outbox, View
from evc.ports import assert_never
from evc.protocol import auth
from evc.protocol.messages import (
    Authorization,
    ChargeRequest,
    CPState,
    DenyCode,
    DriverPair,
    DriverPairProve,
    EndReason,
    EndRequest,
    EndSupply,
    Message,
    OperatorCommand,
    ResumeCP,
    StartSupply,
    StopCP,
    Telemetry,
    Ticket,
    new_id,
)
from evc.protocol.topics import CONTROL
from evc.store import DRIVERS, SESSIONS, SITES, AuditRing, Store

log = logging.getLogger(__name__)


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
        identity: str = "",
        credentials: Credentials | None = None,
        audit: Audit | None = None,
        epoch: int = 0,
        presume: float = 0.0,
    ) -> None:
        self.store = store
        self.epoch = epoch  # this central's term as the active one (CentralStatus)
        # After a takeover (or a restart) a CP whose monitor was connected keeps its last
        # state this long: a failover shorter than the heartbeat timeout shows nobody gone.
        self.presume = presume
        self.outbox = outbox
        self.link = link
        self.view = view
        self.settings = settings or Settings()
        self.events: queue.Queue[Event] = events if events is not None else queue.Queue()
        self.identity = identity or f"{socket.gethostname()} pid {os.getpid()}"
        self.credentials: Credentials = credentials or Nowhere()
        # the audit log, its last events also stored (and so replicated: evc web shows them)
        self.audit: Audit = AuditRing(audit, store) if audit is not None else Nowhere()
        self.drivers: dict[str, str] = {}  # driver id -> its secret (the driver registry)
        self.proven_drivers: set[str] = set()  # drivers that signed with their credential
        self.pairings = pairing.Pairings()  # codes handed out, exchanges under way
        self.sites: dict[str, float | None] = {}  # site -> its power limit in kW (None: none)
        self.challenges: dict[int, PendingRegistration] = {}
        self.cps: dict[str, ChargePoint] = {}
        self.by_conn: dict[int, str] = {}
        self.sessions: dict[str, Session] = {}  # open ones (an end may be decided)
        self._by_driver: dict[str, set[str]] = {}  # driver id -> its sessions in ``sessions``
        self.answered: OrderedDict[str, None] = OrderedDict()
        self.counters = Counters()
        self.quit_requested = threading.Event()
        self.started_at = time.time()
        self.outages: list[tuple[float, float]] = []  # (from, to), wall clock: central deaf
        # what the rules decide, stored with its batch and sent once that is durable
        self.out = Announcer(store, outbox, self.events, view)
        self.bus_down_since: float | None = None  # wall clock, while Kafka is unavailable
        self.bus_down_mono = 0.0  # monotonic, from when Kafka was unavailable
        self.next_heartbeat = 0.0  # monotonic: central's next CentralStatus
        self.next_alive = 0.0  # monotonic: the next "alive" record
        self.status_due: set[str] = set()  # CPs whose public state must be published
        self.presumed: set[str] = set()  # CPs shown in their last state (``presume``)
        restore.restore(self)

    # ------------------------------------------------------------------ the registry
    def add_session(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        self._by_driver.setdefault(session.driver_id, set()).add(session.session_id)

    def upsert_cp(self, cp_id: str, location: str, price: float, site: str | None = None) -> None:
        """Registry entry from --cps or the console: add or update, keep the rest.

        At the authenticated level a new CP gets its secret credential now (written for
        its monitor and engine); at the open level only pairing makes one.
        """
        cp = self.cps.get(cp_id)
        if cp is None:
            cp = self.cps[cp_id] = ChargePoint(cp_id, location, price)
            if self.settings.secure:
                operator.issue_credential(self, cp_id)
        else:
            cp.location, cp.price = location, price
        if site is not None and site != cp.site:
            old, cp.site = cp.site, site
            power.reallocate(self, old)
            power.reallocate(self, site)
        self.save_cp(cp)

    def set_site_limit(self, site: str, limit: float | None) -> None:
        """A site's limit (None: none), from --sites or the console; shares follow."""
        if site in self.sites and self.sites[site] == limit:
            return
        self.sites[site] = limit
        self.store.put(SITES, {"site": site, "max_kw": limit})
        power.reallocate(self, site)

    def upsert_driver(self, driver_id: str, *, credential: bool | None = None) -> bool:
        """Register a driver (from --drivers or the console); True when it is new. It gets
        a credential at the authenticated level, or when ``credential`` says so."""
        if driver_id in self.drivers:
            return False
        self.drivers[driver_id] = ""
        if self.settings.secure if credential is None else credential:
            operator.issue_credential(self, driver_id)  # stores it with its credential
        else:
            self.store.put(DRIVERS, {"driver_id": driver_id, "secret": ""})
        return True

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event) -> None:
        """Apply events until ``stop``; the caller's threads feed ``self.events``."""
        next_tick = 0.0
        # Kafka's silence counts from now: loading a large registry or waiting for the
        # consumer before this is not Kafka being away.
        self.out.last_confirm = time.monotonic()
        while not stop.is_set():
            timeout = max(0.0, next_tick - time.monotonic())
            batch: list[Event] = []
            try:
                batch.append(self.events.get(timeout=timeout))
                while len(batch) < self.settings.batch:
                    batch.append(self.events.get_nowait())
            except queue.Empty:
                pass
            for event in batch:
                self.apply(event)
            with self.outbox.batch():  # the batch's state and messages, seen together
                if time.monotonic() >= next_tick:
                    self.tick()
                    next_tick = time.monotonic() + self.settings.tick
                self.flush()
            if self.quit_requested.is_set():
                stop.set()
        with self.outbox.batch():  # a clean stop: the late changes go with the last batch
            self.store.flush_late()
            self.flush()

    def apply(self, event: Event) -> None:
        """One event. A bug in a rule harms only that event: it is logged and skipped."""
        try:
            self._apply(event)
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop central
            self.counters.internal_errors += 1
            log.exception("internal error applying %s", type(event).__name__)
            self.view.note(f"internal error on {type(event).__name__} ({exc}); skipped, "
                           "see the log", "error")

    def _apply(self, event: Event) -> None:
        match event:
            case MonitorFrame():
                monitors.on_frame(self, event)
            case Heartbeats():
                monitors.on_heartbeats(self, event)
            case ConnectionLost():
                monitors.on_connection_lost(self, event.conn_id, event.reason)
            case BusMessage():
                late = _late(event.message)
                delivery = event.delivery
                if not late and self.store.offset_is_late(delivery.topic, delivery.partition):
                    self.store.flush_late()  # it brings its partition's late readings along
                if self.out.first_time(event.delivery, late=late):
                    self.on_bus(event.message)
            case BusSkipped():
                self.out.first_time(event.delivery)
            case BusRecords():
                for record in event.records:  # each on its own: a bug harms only one
                    self.apply(record)
            case Verdicts():
                for sent in self.out.take_verdicts():
                    self.on_sent(sent)
            case OperatorLine():
                self.on_operator(event.text)
            case OperatorKey():
                line = self.view.key(event.key)
                if line is not None:
                    self.on_operator(line)
            case _:
                assert_never(event)

    def flush(self) -> None:
        """Store the batch, then announce it and ack what it read (announce.py)."""
        self.out.flush()

    def order(self, cp: ChargePoint, message: Message) -> None:
        """An order to a CP's engine: signed with its registration's key once it proved
        its credential (whatever the level); unsigned for a CP that proves nothing."""
        if cp.proven and cp.keys:
            message = auth.sign(message, list(cp.keys.values())[-1])
        self.emit(CONTROL, message, cp.cp_id)

    def _to_driver(self, driver_id: str, message: Message) -> None:
        """An answer or a ticket: signed with the driver's key when it has a credential.
        A denial for the driver's proof is not: the driver's key is not central's."""
        secret = self.drivers.get(driver_id)
        proof_denied = isinstance(message, Authorization) and message.code in (
            DenyCode.BAD_PROOF, DenyCode.UNKNOWN_DRIVER)
        if secret and not proof_denied:
            message = auth.sign(message, auth.driver_key(secret))
        self.emit(CONTROL, message, driver_id)

    def emit(self, topic: str, message: Message, key: str) -> None:
        """Decide a Kafka message: stored with this batch, sent once the batch is stored."""
        self.out.emit(topic, message, key)

    def on_sent(self, event: Sent) -> None:
        if event.status_of is not None and not event.ok:
            self.status_due.add(event.status_of)  # published again at the next tick
        self.out.on_sent(event)

    def tick(self) -> None:
        """Deadlines, re-sends, Kafka's health and central's heartbeat; then the view."""
        ticks.tick(self)

    # ------------------------------------------------------------------ Kafka
    def on_bus(self, msg: CentralRecord) -> None:
        match msg:
            case ChargeRequest():
                self.on_charge_request(msg)
            case EndRequest():
                self.on_end_request(msg)
            case Telemetry():
                self.on_telemetry(msg)
            case DriverPair():
                pairing.on_driver_pair(self, msg)
            case DriverPairProve():
                pairing.on_driver_prove(self, msg)
            case OperatorCommand():
                operators.on_command(self, msg)
            case _:
                assert_never(msg)

    def on_charge_request(self, req: ChargeRequest) -> None:
        if req.msg_id in self.answered:
            log.info("duplicate request %s from %s ignored", req.msg_id, req.driver_id)
            return
        self.answered[req.msg_id] = None
        while len(self.answered) > 100_000:
            self.answered.popitem(last=False)
        self.counters.requests += 1
        refusal = admission.refusal(self, req)
        if refusal is not None:
            code, reason = refusal
            self.counters.denied += 1
            self._to_driver(req.driver_id, Authorization(
                driver_id=req.driver_id, cp_id=req.cp_id, request_id=req.msg_id,
                authorized=False, code=code, reason=reason))
            self.view.note(f"denied {req.driver_id} at {req.cp_id}: {reason}")
            if code in (DenyCode.UNKNOWN_DRIVER, DenyCode.BAD_PROOF):
                self.audit.write("rejected", kind="charge_request", driver_id=req.driver_id,
                                 cp_id=req.cp_id, code=str(code))
            return
        cp = self.cps[req.cp_id]
        before = cp.state
        session = Session(
            session_id=new_id(), cp_id=cp.cp_id, driver_id=req.driver_id,
            request_id=req.msg_id, price=cp.price, started_at=time.time(),
            ev_max_kw=req.max_kw)
        session.wait(Wait.START, self.settings.start_timeout)
        self.add_session(session)
        cp.session = session
        share = power.start_share(self, cp, session)
        start = StartSupply(cp_id=cp.cp_id, driver_id=req.driver_id,
                            session_id=session.session_id, price_eur_kwh=cp.price, kw=share)
        power.started(session, start.msg_id)
        self.store.put_session(session.record(status="open"))
        self.order(cp, start)
        if cp.site:
            power.send_due(self, cp.site)  # the others' decreases, if it needs their power
        self._to_driver(req.driver_id, Authorization(
            driver_id=req.driver_id, cp_id=cp.cp_id, request_id=req.msg_id, authorized=True,
            reason="authorized: plug in your vehicle", session_id=session.session_id,
            price_eur_kwh=cp.price))
        self.counters.authorized += 1
        self.refresh_cp(cp, f"supply authorized for {req.driver_id}", before)

    def running_session_of(self, driver_id: str) -> Session | None:
        """The driver's supply whose end is not decided yet, if any."""
        for session_id in self._by_driver.get(driver_id, ()):
            session = self.sessions[session_id]
            if session.end_reason is None:
                return session
        return None

    def age(self, ts: float) -> float:
        """Seconds since ``ts`` during which central could have read a message."""
        now = time.time()
        away = sum(max(0.0, min(end, now) - max(start, ts)) for start, end in self.outages)
        return now - ts - away

    def on_end_request(self, req: EndRequest) -> None:
        session = self.sessions.get(req.session_id)
        if session is None or session.driver_id != req.driver_id or session.cp_id != req.cp_id:
            log.info("end request for unknown or finished session %s ignored", req.session_id)
            return
        if admission.driver_proof(self, req) is not None:
            self.audit.write("rejected", kind="end_request", driver_id=req.driver_id,
                             session_id=req.session_id, why="not signed by the driver")
            log.warning("end request for %s without the driver's signature ignored",
                        req.session_id)
            return
        self.end_session(session, EndReason.FINISHED)

    def on_telemetry(self, t: Telemetry) -> None:
        session = self.sessions.get(t.session_id) if t.session_id else self._bare_session(t)
        if session is None or session.cp_id != t.cp_id or session.driver_id != t.driver_id:
            log.debug("telemetry for no running session (%s %s) ignored", t.cp_id, t.session_id)
            return
        why = admission.implausible(self, t, session)
        if why is not None:
            self.audit.write("rejected", kind="telemetry", cp_id=t.cp_id,
                             session_id=session.session_id, why=why)
            log.warning("%s: reading ignored: %s", t.cp_id, why)
            return
        if t.consumo_kwh < session.kwh:
            log.warning("%s: reading of %.3f kWh below the %.3f kWh already seen; kept the "
                        "higher", t.cp_id, t.consumo_kwh, session.kwh)
        session.kwh = max(session.kwh, t.consumo_kwh)
        session.eur = round(session.kwh * session.price, 2)  # central's price, not the engine's
        if not session.supplying:
            session.supplying = True
        if session.waiting is Wait.START:
            session.wait(None)
        power.on_reading(self, session, t)
        self.store.put(SESSIONS, {"session_id": session.session_id, "consumo_kwh": session.kwh,
                                  "importe_eur": session.eur, "supplying": True,
                                  "kw": session.kw},
                       late=_late(t) and not t.final)
        if t.final:
            reason = session.end_reason or reason_of(t.reason)
            self.close_session(session, reason)

    def _bare_session(self, t: Telemetry) -> Session | None:
        """A reading in the seed's bare shape belongs to the open session of its CP."""
        cp = self.cps.get(t.cp_id)
        return cp.session if cp is not None else None

    # ------------------------------------------------------------------ sessions
    def end_session(self, session: Session, reason: EndReason) -> None:
        """Decide the end of a supply: order the engine to stop, await its final figures."""
        if session.end_reason is not None:
            return
        session.end_reason = reason
        self.store.put_session({"session_id": session.session_id, "end_reason": str(reason)})
        self.order_end(session)
        cp = self.cps.get(session.cp_id)
        if cp is not None:
            power.reallocate(self, cp.site)  # the others' shares rise once it is over

    def order_end(self, session: Session) -> None:
        """Order the engine to end a supply whose end is decided, and await its final."""
        assert session.end_reason is not None
        session.wait(Wait.FINAL, self.settings.final_timeout)
        end = EndSupply(cp_id=session.cp_id, session_id=session.session_id,
                        reason=session.end_reason)
        cp = self.cps.get(session.cp_id)
        if cp is not None:
            self.order(cp, end)
        else:
            self.emit(CONTROL, end, session.cp_id)

    def close_session(self, session: Session, reason: EndReason) -> None:
        """The supply is over: one ticket, the session stored as closed, the CP freed."""
        if self.sessions.pop(session.session_id, None) is None:
            return
        mine = self._by_driver.get(session.driver_id)
        if mine is not None:
            mine.discard(session.session_id)
            if not mine:
                del self._by_driver[session.driver_id]
        ended = time.time()
        ticket = Ticket(
            driver_id=session.driver_id, cp_id=session.cp_id, session_id=session.session_id,
            consumo_kwh=session.kwh, importe_eur=session.eur, price_eur_kwh=session.price,
            started_at=session.started_at, ended_at=ended, reason=reason)
        self._to_driver(session.driver_id, ticket)
        self.counters.tickets += 1
        self.store.put_session(session.record(
            status="closed", ended_at=ended, reason=str(reason), ticket_id=ticket.msg_id))
        self.view.note(f"ticket to {session.driver_id} for {session.cp_id}: "
                       f"{session.kwh:.2f} kWh, {session.eur:.2f} € ({reason})")
        cp = self.cps.get(session.cp_id)
        if cp is not None:
            power.reallocate(self, cp.site)  # its power is free: the others may have it
        if cp is not None and cp.session is session:
            before = cp.state
            cp.session = None
            self.refresh_cp(cp, f"supply ended ({reason})", before)

    # ------------------------------------------------------------------ operator
    def on_operator(self, line: str) -> None:
        """A console line (operator.py says what each command does)."""
        operator.apply(self, line)

    def stop_cp(self, cp: ChargePoint) -> None:
        """Out of order: the engine is told, a running supply ends (and is billed)."""
        before = cp.state
        cp.stopped = True
        self.order(cp, StopCP(cp_id=cp.cp_id))
        if cp.session is not None:
            self.end_session(cp.session, EndReason.STOPPED)
        self.refresh_cp(cp, "stopped by the operator", before)

    def resume_cp(self, cp: ChargePoint) -> None:
        before = cp.state
        cp.stopped = False
        self.order(cp, ResumeCP(cp_id=cp.cp_id))
        self.refresh_cp(cp, "resumed by the operator", before)

    def remove_cp(self, cp: ChargePoint) -> None:
        """Out of the registry (operator.py checks it is neither connected nor supplying)."""
        del self.cps[cp.cp_id]
        self.store.remove_cp(cp.cp_id)
        self.status_due.add(cp.cp_id)

    # ------------------------------------------------------------------ helpers
    def save_cp(self, cp: ChargePoint) -> None:
        self.status_due.add(cp.cp_id)
        self.store.put_cp({
            "cp_id": cp.cp_id, "location": cp.location, "price_eur_kwh": cp.price,
            "stopped": cp.stopped, "state": str(cp.state), "last_seen": cp.last_seen,
            "secret": cp.secret, "keys": cp.keys, "proven": cp.proven, "site": cp.site,
            "max_kw": cp.max_kw, "via": cp.via,
        })

    def refresh_cp(self, cp: ChargePoint, why: str, before: CPState) -> None:
        cp.state = cp.derive()
        self.save_cp(cp)
        if cp.state is not before:
            self.view.changed(cp, before, cp.state, why)

    def counts(self) -> dict[CPState, int]:
        out = {state: 0 for state in CPState}
        for cp in self.cps.values():
            out[cp.state] += 1
        return out


def _late(msg: Message) -> bool:
    """A reading of a supply named by its session: how far its partition was read may
    reach the changelog late (Store.late_every), for a central taking over reads it again.
    A running supply's reading only raises its session's figures (reading it twice
    changes nothing); a final one closes its session, and that close goes at once, so a
    final read again finds no open session and is ignored. A record that must never be
    read twice (a reading in the seed's bare shape, whose session is its CP's open one,
    whichever that is when it is read) read in a partition whose offset is late brings
    the late changes along. Records of other partitions, a driver's requests, need not:
    a session they change goes whole, its figures with it."""
    return isinstance(msg, Telemetry) and bool(msg.session_id)

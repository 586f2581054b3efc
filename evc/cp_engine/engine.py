"""The engine's rules, owned by one thread (see command.py for the I/O threads).

Health: OK, KO (key ``f``) or HANG (key ``h``: no answer at all); ``r`` recovers.
A supply runs from a StartSupply for this CP until an EndSupply, the operator's
stop, an unplug (key ``u``), a fault, or the time limit; each second it adds
``kw × speed / 3600`` kWh and sends telemetry with the seed's keys and ``kw``, and at its
end one final telemetry message (``final: true`` and the reason). ``kw`` is the CP's
maximum (``--max-kw``), or less: the share of its site's limit central gives it
(``start_supply.kw``, then ``set_power``), kept while central is away; 0 waits.

Trust, one level per CP: a registration its monitor proved hands the engine that
registration's Kafka key (``EngineKey``: derived from the CP's secret, never sent). From
the first such key on, the engine is *proven* and stays so (the keys are in its journal):
it obeys only orders signed with its key (one signed with a key it does not have yet
waits a few seconds for it), answers only health checks proven with the CP's secret and
signs its readings; nothing a stranger sends talks it down. An engine that was never
proven obeys unsigned orders, as the seed's does, once its monitor said that its
registration is unproven (``EngineOpen``); until its monitor has said either, orders
wait a few seconds for the word. Whatever it refuses is said on its
screen and handed to its monitor in the next health reply, for central's board.

The meter survives the process: a small journal holds the running supply
(written each second, before its telemetry leaves) and every final message
Kafka has not yet confirmed. An engine killed mid-supply and started again
reports that supply's figures as its final message, and sends unconfirmed
finals again; a start order it has seen before is never obeyed twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum

from evc.errors import BusError, ProtocolError
from evc.ports import Journal, Send, Unconfirmed, Verdict, assert_never
from evc.protocol import auth
from evc.protocol.codes import DEFAULT_SPEED
from evc.protocol.messages import (
    CPState,
    EndReason,
    EndSupply,
    EngineKey,
    EngineOpen,
    Health,
    HealthCheck,
    HealthReply,
    Message,
    ResumeCP,
    SetPower,
    StartSupply,
    StopCP,
    Telemetry,
    from_wire,
)
from evc.protocol.topics import TELEMETRY

log = logging.getLogger(__name__)

SEEN = 100  # start orders remembered, so a repeated one is never obeyed twice
CHECK_AGE = 60.0  # a health check older (or newer) than this is a replay
PARK = 10.0  # seconds an order signed with a key not yet here waits for it


Order = StartSupply | EndSupply | StopCP | ResumeCP | SetPower
"""What central orders an engine (control_topic also carries drivers' answers)."""
ORDER_TYPES = (StartSupply, EndSupply, StopCP, ResumeCP, SetPower)


class Mode(Enum):
    OK = "OK"
    KO = "KO"
    HANG = "HANG"


@dataclass
class Supply:
    session_id: str
    driver_id: str
    price: float
    started: float  # monotonic
    kwh: float = 0.0
    eur: float = 0.0
    next_tick: float = 0.0
    share: float | None = None  # kW central allows it (None: no limit, the maximum)
    power_order: str = ""  # the order that set ``share`` (its readings name it)
    power_seq: int = 0  # that order's seq: an older one (sent again) is not obeyed


class Engine:
    def __init__(
        self,
        send: Send,
        show: Callable[[str], None],
        *,
        journal: Journal,
        notify: Callable[[str, BusError | None], None] | None = None,
        cp_id: str | None = None,
        max_kw: float = 22.0,
        speed: float = DEFAULT_SPEED,
        max_seconds: float = 0.0,
        secret_for: Callable[[str], str | None] = lambda _cp: None,
    ) -> None:
        self.send = send  # bus.send(topic, message, key, on_done)
        self.show = show  # one line for the person at this CP
        self.journal = journal
        # notify(session_id, error): Kafka's verdict on a final message, handed back to
        # the owner thread (which calls final_done); None = call it directly.
        # Finals are sent until Kafka confirms them, signed with the newest key each time.
        self.finals = Unconfirmed(send, notify or self.final_done, say=show, sign=self._signed)
        # Finals Kafka refused for good: not sent again in this run, kept in the journal
        # for the next start (its cause mended).
        self.refused: dict[str, Telemetry] = {}
        self.cp_id = cp_id
        self.max_kw = max_kw
        self.speed = speed
        self.max_seconds = max_seconds
        self.mode = Mode.OK
        self.stopped = False
        self.supply: Supply | None = None
        self.seen: list[str] = []  # session ids of start orders already handled
        # msg_ids of the last orders obeyed: one sent again (central re-sends what Kafka
        # had not confirmed when it died) is not obeyed twice, e.g. a stop after a resume
        self.obeyed: deque[str] = deque(maxlen=SEEN)
        self.secret_for = secret_for  # the CP's credential, if this machine has it
        self.keys: dict[str, str] = {}  # kid -> this CP's Kafka key (the newest last)
        self.nonces: dict[str, float] = {}  # health-check nonces seen (replays refused)
        self.parked: list[tuple[float, Message]] = []  # orders waiting for their key
        self.refusals: list[tuple[str, str]] = []  # (what, session id) for the next reply
        self.open = False  # its monitor said this registration is unproven: orders unsigned

    # ------------------------------------------------------------------ view
    @property
    def state(self) -> CPState:
        """The CP as this engine sees it (without a monitor it cannot know Desconectado)."""
        return CPState.of(connected=True, faulted=self.mode is not Mode.OK,
                          stopped=self.stopped, supplying=self.supply is not None)

    @property
    def kw(self) -> float:
        """The power supplied now: the maximum, or central's share when smaller."""
        s = self.supply
        if s is None:
            return 0.0
        return self.max_kw if s.share is None else max(0.0, min(self.max_kw, s.share))

    @property
    def proven(self) -> bool:
        """A proven registration handed this engine its key: it wants signed orders."""
        return bool(self.keys)

    def status_line(self) -> str:
        who = self.cp_id or "(waiting for monitor)"
        trust = "signed orders only" if self.proven else "open"
        line = f"[{who}] {self.state} | health {self.mode.value} | {trust}"
        if self.supply is not None:
            s = self.supply
            line += f" | driver {s.driver_id} {s.kwh:.2f} kWh {s.eur:.2f} € {self.kw:.1f} kW"
            if self.kw <= 0:
                line += " (waiting for power)"
        return line + " | keys: f fault, h hang, r recover, u unplug"

    # ------------------------------------------------------------------ journal
    def recover(self) -> None:
        """At start: finish what the journal says a killed engine left unfinished."""
        data = self.journal.load()
        self.seen = [str(s) for s in data.get("seen", [])][-SEEN:]
        self.keys = {str(k): str(v) for k, v in dict(data.get("keys", {})).items()}
        for wire in data.get("finals", []):
            try:
                final = from_wire(wire)
            except ProtocolError as exc:  # a journal from another version
                log.error("journal entry not understood, dropped: %s", exc)
                continue
            if isinstance(final, Telemetry):
                self.finals.add(final.session_id, TELEMETRY, final, final.cp_id)
        running = data.get("supply")
        if running:
            cp_id = str(running["cp_id"])
            final = Telemetry(
                cp_id=cp_id, driver_id=running["driver_id"],
                consumo_kwh=float(running["kwh"]), importe_eur=float(running["eur"]),
                session_id=running["session_id"], final=True, reason=str(EndReason.FAULT))
            self.finals.add(final.session_id, TELEMETRY, final, cp_id)
            self.show(f"the engine stopped during the supply of {final.driver_id} at {cp_id}: "
                      f"reporting its {final.consumo_kwh:.2f} kWh, {final.importe_eur:.2f} €")
        self._save()
        for session_id in list(self.finals.pending):
            self.finals.send_now(session_id)

    def _save(self) -> None:
        s = self.supply
        self.journal.save({
            "supply": None if s is None else {
                **asdict(s), "cp_id": self.cp_id, "started_at": time.time() - (
                    time.monotonic() - s.started)},
            "finals": [p.message.to_wire() for p in self.finals.pending.values()]
            + [f.to_wire() for f in self.refused.values()],
            "seen": self.seen[-SEEN:],
            "keys": self.keys,
        })

    def _signed(self, reading: Message) -> Message:
        """A reading signed with the newest key (the authenticated level)."""
        if self.keys:
            return auth.sign(reading, list(self.keys.values())[-1])
        return reading

    def final_done(self, session_id: str, error: BusError | None) -> None:
        """Kafka's verdict on a final message: forget it, send it again soon, or (refused
        for good) keep it for the next start."""
        pending = self.finals.pending.get(session_id)
        verdict = self.finals.settle(session_id, error)
        if verdict is Verdict.GAVE_UP and pending is not None:
            assert isinstance(pending.message, Telemetry)
            self.refused[session_id] = pending.message
        if verdict in (Verdict.CONFIRMED, Verdict.GAVE_UP):
            self._save()

    # ------------------------------------------------------------------ health (TCP)
    def refuse_check(self, check: HealthCheck) -> str | None:
        """Why this check is not from the CP's own monitor, or None to answer it (a proven
        engine answers only checks proven with its CP's secret)."""
        if not self.proven:
            return None  # never proven: nothing to check against, as the seed
        cp_id = self.cp_id or check.cp_id
        secret = self.secret_for(cp_id)
        if secret is None:
            return (f"a health check for {check.cp_id}: this engine was proven with "
                    f"{cp_id}'s credential, which is not here any more")
        if not check.proof or not auth.same(
                auth.check_proof(secret, cp_id, check.nonce, check.ts), check.proof):
            return (f"a health check for {check.cp_id} without its credential's proof (this "
                    "engine was proven: its monitor needs the credential too)")
        now = time.time()
        if abs(now - check.ts) > CHECK_AGE or check.nonce in self.nonces:
            return "a replayed health check"
        self.nonces[check.nonce] = now
        if len(self.nonces) > 1000:
            self.nonces = {n: t for n, t in self.nonces.items() if now - t < CHECK_AGE}
        return None

    def on_engine_key(self, msg: EngineKey) -> bool:
        """The monitor hands over this registration's Kafka key; False if it does not fit."""
        secret = self.secret_for(msg.cp_id)
        if secret is None or msg.cp_id != (self.cp_id or msg.cp_id):
            return False
        key = auth.kafka_key(secret, msg.client_nonce, msg.server_nonce)
        if auth.key_id(key) != msg.key_id:
            return False
        self._serve(msg.cp_id)  # only its own monitor can make a key that fits
        if msg.key_id not in self.keys:
            if not self.keys:
                self.show(f"{self.cp_id} is proven (its monitor proved the credential): "
                          "only signed orders from now on")
            self.keys = {**dict(list(self.keys.items())[-1:]), msg.key_id: key}
            self.open = False
            self._save()
            self._unpark()
        return True

    def on_engine_open(self, msg: EngineOpen) -> bool:
        """The monitor says central serves this CP unproven; False if that cannot be (a
        proven engine is never talked down, and it must be this engine's CP)."""
        if self.proven or msg.cp_id != (self.cp_id or msg.cp_id):
            self.refuse(f"a word that {msg.cp_id} is unproven (this engine "
                        + ("was proven: only signed orders count)" if self.proven
                           else f"serves {self.cp_id})"))
            return False
        self._serve(msg.cp_id)
        if not self.open:
            self.open = True
            self.show(f"{self.cp_id} is served unproven: orders come unsigned")
            self._unpark()
        return True

    def _serve(self, cp_id: str) -> str:
        """The CP this engine serves: learnt from its monitor the first time it is told."""
        if self.cp_id is None:
            self.cp_id = cp_id
            self.show(f"serving {cp_id} (told by its monitor)")
        return self.cp_id

    def _unpark(self) -> None:
        parked, self.parked = self.parked, []
        for _, order in parked:  # orders that were waiting for a key or for the word
            self.on_order(order)

    def on_health_check(self, check: HealthCheck) -> HealthReply | None:
        """The answer to send, or None to stay silent (hang)."""
        cp_id = self._serve(check.cp_id)
        if check.cp_id != cp_id:
            log.error("monitor checks %s but this engine is %s", check.cp_id, cp_id)
            return HealthReply(cp_id=cp_id, status=Health.KO, state="wrong CP")
        if self.mode is Mode.HANG:
            return None
        status = Health.OK if self.mode is Mode.OK else Health.KO
        refused, session_id = self.take_refusals()
        return HealthReply(cp_id=cp_id, status=status, state=str(self.state),
                           refused=refused, session_id=session_id, max_kw=self.max_kw)

    def refuse(self, what: str, session_id: str = "") -> None:
        """Something refused: said here, and told to central through the monitor."""
        log.info("refused %s", what)
        self.show(f"refused {what}")
        self.refusals = [*self.refusals[-9:], (what, session_id)]

    def take_refusals(self) -> tuple[str, str]:
        """What was refused since the last reply, in words (at most a line), and the
        session of a start order among it."""
        if not self.refusals:
            return "", ""
        taken, self.refusals = self.refusals, []
        text = taken[0][0] + (f" and {len(taken) - 1} more" if len(taken) > 1 else "")
        return text[:190], next((sid for _, sid in taken if sid), "")

    # ------------------------------------------------------------------ orders (Kafka)
    def on_order(self, msg: Message) -> None:
        """A record of this CP's control partition: obeyed if it is an order for this CP
        (signed with this registration's key, at the authenticated level)."""
        if not isinstance(msg, ORDER_TYPES) or msg.cp_id != self.cp_id or self.cp_id is None:
            return
        if not self.proven and not self.open:  # its level not said yet: wait for the word
            self._park(msg)
            return
        if self.proven:  # once proven, only signed orders (no downgrade)
            key = self.keys.get(msg.kid)
            session_id = msg.session_id if isinstance(msg, StartSupply) else ""
            if key is None:
                if msg.mac:  # signed with a key not here yet: wait a little for it
                    self._park(msg)
                else:
                    self.refuse(f"an unsigned {msg.TYPE} order (this CP was proven: only "
                                "orders signed with its key count)", session_id)
                return
            if not auth.verify(msg, key):
                self.refuse(f"a forged {msg.TYPE} order (its signature does not verify)",
                            session_id)
                return
        if msg.msg_id in self.obeyed:
            return
        self.obeyed.append(msg.msg_id)
        self._obey(msg)

    def _park(self, msg: Message) -> None:
        now = time.monotonic()
        if any(now - t >= PARK for t, _ in self.parked):
            self.refuse("an order that waited in vain for its monitor's key or word")
        self.parked = [(t, o) for t, o in self.parked if now - t < PARK][-50:]
        self.parked.append((now, msg))

    def _obey(self, order: Order) -> None:
        match order:
            case StartSupply():
                self._start(order)
            case EndSupply():
                if self.supply is not None and self.supply.session_id == order.session_id:
                    self._end(order.reason)
                else:  # already ended here (e.g. by a fault): its final is on its way
                    log.info("end order for %s, which is not running", order.session_id)
            case StopCP():
                if not self.stopped:
                    self.stopped = True
                    self.show("stopped by central (Parado)")
                if self.supply is not None:
                    self._end(EndReason.STOPPED)
            case ResumeCP():
                if self.stopped:
                    self.stopped = False
                    self.show("resumed by central")
            case SetPower():
                s = self.supply
                if s is not None and s.session_id == order.session_id:
                    if order.seq and order.seq <= s.power_seq:
                        log.info("power order %d for %s is older than the one obeyed (%d)",
                                 order.seq, s.session_id, s.power_seq)
                        return  # an earlier share, sent again: the newer one holds
                    changed = s.share != order.kw
                    s.share, s.power_order, s.power_seq = order.kw, order.msg_id, order.seq
                    self._save()
                    self._telemetry()  # what it supplies now: central counts on it
                    if not changed:
                        return
                    self.show(f"power for {s.driver_id}: {self.kw:.1f} kW"
                              + (" (waiting for power)" if self.kw <= 0 else ""))
            case _:
                assert_never(order)

    def _start(self, order: StartSupply) -> None:
        if order.session_id in self.seen:
            return  # a repeated order (central re-sends what Kafka did not confirm)
        self.seen.append(order.session_id)
        refusal = None
        if self.mode is not Mode.OK:
            refusal = "engine faulted"
        elif self.stopped:
            refusal = "stopped by central"
        elif self.supply is not None:
            refusal = f"busy with {self.supply.driver_id}"
        if refusal:
            self.show(f"refused supply for {order.driver_id}: {refusal}")
            final = Telemetry(
                cp_id=order.cp_id, driver_id=order.driver_id, consumo_kwh=0.0, importe_eur=0.0,
                session_id=order.session_id, final=True, reason=str(EndReason.REFUSED))
            self.finals.add(final.session_id, TELEMETRY, final, final.cp_id)
            self._save()
            self.finals.send_now(final.session_id)
            return
        now = time.monotonic()
        self.supply = Supply(order.session_id, order.driver_id, order.price_eur_kwh, now,
                             next_tick=now + 1.0, share=order.kw, power_order=order.msg_id)
        self._save()
        self.show(f"supplying {order.driver_id} at {order.price_eur_kwh:.2f} €/kWh, "
                  f"{self.kw:.1f} kW" + (" (waiting for power)" if self.kw <= 0 else ""))
        self._telemetry()

    # ------------------------------------------------------------------ keys
    def on_key(self, key: str) -> None:
        key = key.strip().lower()[:1]
        if key == "f":
            self._fault(Mode.KO, "fault simulated: answering KO")
        elif key == "h":
            self._fault(Mode.HANG, "hang simulated: not answering health checks")
        elif key == "r":
            if self.mode is not Mode.OK:
                self.mode = Mode.OK
                self.show("recovered: answering OK")
        elif key == "u":
            if self.supply is not None:
                self.show("vehicle unplugged")
                self._end(EndReason.UNPLUGGED)
        elif key:
            self.show(f"unknown key {key!r}: f fault, h hang, r recover, u unplug")

    def shutdown(self) -> None:
        """The engine process ends: a running supply ends too, with its final figures."""
        if self.supply is not None:
            self.show("engine shutting down")
            self._end(EndReason.FAULT)

    def _fault(self, mode: Mode, text: str) -> None:
        self.mode = mode
        self.show(text)
        if self.supply is not None:
            self._end(EndReason.FAULT)

    # ------------------------------------------------------------------ supply
    def tick(self) -> float:
        """Advance the supply, re-send finals due; return seconds until the next tick."""
        now = time.monotonic()
        self.finals.resend_due(now)
        s = self.supply
        if s is None:
            return 1.0 if not self.finals else 0.2
        if now >= s.next_tick:
            s.kwh = round(s.kwh + self.kw * self.speed / 3600, 4)
            s.eur = round(s.kwh * s.price, 2)
            s.next_tick += 1.0
            if s.next_tick < now:  # we fell behind (suspended): do not burst
                s.next_tick = now + 1.0
            if self.max_seconds and now - s.started >= self.max_seconds:
                self._end(EndReason.TIME_LIMIT)
                return 1.0
            self._save()  # the meter first: a kill now reports this figure on restart
            self._telemetry()
        return max(0.0, s.next_tick - time.monotonic())

    def _telemetry(self) -> None:
        """A live reading; if Kafka cannot take it, the next one (and the final) carry on."""
        s = self.supply
        assert s is not None and self.cp_id is not None
        try:
            self.send(TELEMETRY, self._signed(Telemetry(
                cp_id=self.cp_id, driver_id=s.driver_id, consumo_kwh=s.kwh, importe_eur=s.eur,
                session_id=s.session_id, kw=round(self.kw, 3),
                power_order=s.power_order)), self.cp_id)
        except BusError as exc:
            log.warning("live reading not sent: %s", exc)

    def _end(self, reason: EndReason) -> None:
        s = self.supply
        if s is None or self.cp_id is None:
            return
        final = Telemetry(cp_id=self.cp_id, driver_id=s.driver_id, consumo_kwh=s.kwh,
                          importe_eur=s.eur, session_id=s.session_id, final=True,
                          reason=str(reason), kw=0.0)
        self.finals.add(s.session_id, TELEMETRY, final, self.cp_id)
        self.supply = None
        self._save()
        self.finals.send_now(s.session_id)
        self.show(f"supply for {s.driver_id} ended ({reason}): {s.kwh:.2f} kWh, {s.eur:.2f} €")

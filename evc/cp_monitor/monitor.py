"""EV_CP_M's rules and I/O threads (the Click command is in command.py).

Three threads: the engine checker (a health check every second, answer within
1 s), a reader of central's frames, and the main thread, which owns the state:
it registers, sends heartbeats, reports AVERÍA / OK the moment the engine's
health changes, and reconnects to central with backoff when the link is lost.

Trust: a monitor that holds its CP's credential always proves it and wants central's
proof back (a central that accepts it without proving itself is left: no downgrade);
one that holds none is served only where central allows it (the open level, a CP never
proven). With ``--pair CODE`` it first pairs over the same link (protocol/pairing.py)
and stores the credential it derives. What the engine refuses reaches central.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass

from evc.console import say, stamp
from evc.errors import ProtocolError, StoreError
from evc.net import Address
from evc.ports import assert_never
from evc.protocol import auth, pairing
from evc.protocol.framing import read_frames, recv_frame, send_frame
from evc.protocol.messages import (
    Challenge,
    EngineKey,
    EngineOpen,
    EngineRefused,
    ErrorFrame,
    FaultReport,
    Health,
    HealthCheck,
    HealthReply,
    Heartbeat,
    HeartbeatAck,
    Message,
    PairAccepted,
    PairChallenge,
    PairProve,
    PairRejected,
    PairStart,
    Prove,
    RecoveryReport,
    Register,
    RegisterAccepted,
    RegisterRejected,
    RejectCode,
    from_wire,
)
from evc.store.credentials import Credential

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str
    max_kw: float = 0.0  # what the engine says it can supply (0: unknown)


@dataclass(frozen=True)
class Refusal:
    """What the engine said it refused (in a health reply), for central."""

    text: str
    session_id: str


@dataclass(frozen=True)
class CentralFrame:
    link: int
    message: Message


@dataclass(frozen=True)
class CentralLost:
    link: int
    reason: str


MonitorEvent = HealthResult | Refusal | CentralFrame | CentralLost
"""What the monitor's reader threads hand to its main thread."""

CentralWord = (Challenge | RegisterAccepted | RegisterRejected | ErrorFrame | HeartbeatAck
               | PairChallenge | PairAccepted | PairRejected)
"""What central may say to a monitor."""
CENTRAL_WORDS = (Challenge, RegisterAccepted, RegisterRejected, ErrorFrame, HeartbeatAck,
                 PairChallenge, PairAccepted, PairRejected)


# ---------------------------------------------------------------------- engine checker


class EngineKeys:
    """What the engine must know of the latest registration: its Kafka key (proven) or
    that it is unproven (set by the monitor's owner thread, sent by the checker on each
    new engine connection and whenever it changes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: EngineKey | EngineOpen | None = None
        self._version = 0

    def set(self, key: EngineKey | EngineOpen) -> None:
        with self._lock:
            self._key = key
            self._version += 1

    def get(self) -> tuple[int, EngineKey | EngineOpen | None]:
        with self._lock:
            return self._version, self._key


def health_check(cp_id: str, secret: str | None) -> HealthCheck:
    """A check the engine can tell comes from this CP's monitor (when it has the secret)."""
    if secret is None:
        return HealthCheck(cp_id=cp_id)
    nonce, ts = auth.new_nonce(), time.time()
    return HealthCheck(cp_id=cp_id, ts=ts, nonce=nonce,
                       proof=auth.check_proof(secret, cp_id, nonce, ts))


def check_engine(engine: Address, cp_id: str, events: queue.Queue[MonitorEvent],
                 stop: threading.Event, interval: float, answer_timeout: float,
                 credential: Credential | None = None, keys: EngineKeys | None = None) -> None:
    sock: socket.socket | None = None
    sent_version = -1
    next_check = time.monotonic()
    while not stop.is_set():
        result: HealthResult
        try:
            if sock is None:
                sock = socket.create_connection(engine.pair, timeout=answer_timeout)
                sent_version = -1  # a new engine connection: hand the key over again
            sock.settimeout(answer_timeout)
            if keys is not None:
                version, key = keys.get()
                if key is not None and version != sent_version:
                    send_frame(sock, key.to_wire())
                    sent_version = version
            secret = credential.get() if credential is not None else None
            send_frame(sock, health_check(cp_id, secret).to_wire())
            obj = recv_frame(sock)
            if obj is None:
                raise ConnectionError("engine closed the connection")
            reply = from_wire(obj)
            if not isinstance(reply, HealthReply):
                raise ProtocolError(f"unexpected {reply.TYPE!r}")
            if reply.refused:
                events.put(Refusal(reply.refused, reply.session_id))
            if reply.status is Health.OK:
                result = HealthResult(True, "engine OK", reply.max_kw)
            else:
                state = reply.state or "fault"
                result = HealthResult(False, f"engine answered KO ({state})"[:200],
                                      reply.max_kw)
        except TimeoutError:
            result = HealthResult(False, f"engine did not answer within {answer_timeout:g} s")
        except (OSError, ProtocolError) as exc:
            text = getattr(exc, "strerror", None) or str(exc)
            result = HealthResult(False, f"engine unreachable at {engine} ({text})")
        if not result.ok and sock is not None:
            sock.close()  # a fresh connection next time: no stale answers
            sock = None
        events.put(result)
        next_check += interval
        stop.wait(max(0.0, next_check - time.monotonic()))
        next_check = max(next_check, time.monotonic())
    if sock is not None:
        sock.close()


# ---------------------------------------------------------------------- central link


def read_central(sock: socket.socket, link: int, events: queue.Queue[MonitorEvent],
                 stop: threading.Event) -> None:
    reason = "central closed the connection"
    try:
        for obj in read_frames(sock, stop):
            events.put(CentralFrame(link, from_wire(obj)))
    except ProtocolError as exc:
        reason = f"bad frame from central: {exc}"
    except OSError as exc:
        reason = f"connection to central broken ({exc.strerror or exc})"
    events.put(CentralLost(link, reason))


class Monitor:
    """The main thread's state and rules."""

    def __init__(self, central: Address | list[Address], cp_id: str, location: str,
                 events: queue.Queue[MonitorEvent],
                 stop: threading.Event, heartbeat: float, central_timeout: float,
                 credential: Credential | None = None,
                 engine_keys: EngineKeys | None = None, pair_code: str | None = None) -> None:
        # Every central this CP may register with (the active one and its standby): tried
        # in turn; a standby's refusal moves on at once.
        self.centrals = central if isinstance(central, list) else [central]
        self.central = self.centrals[0]
        self.tried = 0  # addresses tried since the last registration
        self.cp_id = cp_id
        self.location = location
        self.events = events
        self.stop = stop
        self.heartbeat = heartbeat
        self.central_timeout = central_timeout
        self.sock: socket.socket | None = None
        self.link = 0
        self.registered = False
        self.reader: threading.Thread | None = None
        self.health: HealthResult | None = None
        self.reported_ok: bool | None = None  # what central was last told
        self.registered_ok = True  # the health the last Register carried
        self.backoff = 0.5
        self.next_connect = 0.0
        self.next_beat = 0.0
        self.last_rx = 0.0
        self.exit_code = 0
        self.unavailable_since: float | None = time.time()  # until first registered
        self.credential = credential
        self.secret: str | None = None  # the CP's credential (None: the open level)
        self.engine_keys = engine_keys or EngineKeys()
        self.nonce = ""  # this connection's nonce (ours)
        self.challenge = ""  # central's nonce
        self.pair_code = pair_code  # pair first with this code (--pair), then register
        self.pake: pairing.PakeSide | None = None
        self.pair_key = b""
        self.refusals: list[Refusal] = []  # the engine's, until central can be told

    def run(self) -> None:
        # The first health result decides what the registration says.
        self._wait_first_health(2.0)
        while not self.stop.is_set():
            now = time.monotonic()
            if self.sock is None and now >= self.next_connect:
                self._connect()
            elif self.sock is not None:
                if self.registered and now >= self.next_beat:
                    self._send(Heartbeat(cp_id=self.cp_id))
                    self.next_beat = now + self.heartbeat
                if self.sock is not None and now - self.last_rx > self.central_timeout:
                    self._lost(f"central silent for {self.central_timeout:g} s")
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            self._handle(event)
        self.close()

    def _wait_first_health(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.health is None and not self.stop.is_set() and time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            self._handle(event)

    def _handle(self, event: MonitorEvent) -> None:
        match event:
            case HealthResult():
                changed = self.health is None or self.health.ok != event.ok
                self.health = event
                if changed:
                    say(f"{self.cp_id}: {event.detail}")
                self._report_health()
            case Refusal():
                say(f"{self.cp_id}: the engine refused {event.text}")
                self.refusals = [*self.refusals[-4:], event]
                self._tell_refusals()
            case CentralFrame():
                if event.link == self.link:  # not a connection that was replaced
                    self.last_rx = time.monotonic()
                    self._on_central(event.message)
            case CentralLost():
                if event.link == self.link and self.sock:
                    self._lost(event.reason)
            case _:
                assert_never(event)

    def _tell_refusals(self) -> None:
        if not self.registered:
            return
        told, self.refusals = self.refusals, []
        for refusal in told:
            self._send(EngineRefused(cp_id=self.cp_id, refused=refusal.text,
                                     session_id=refusal.session_id))

    def _report_health(self) -> None:
        if not self.registered or self.health is None or self.reported_ok == self.health.ok:
            return
        if self.health.ok:
            self._send(RecoveryReport(cp_id=self.cp_id))
            say(f"{self.cp_id}: OK sent to central (engine recovered)")
        else:
            self._send(FaultReport(cp_id=self.cp_id, reason=self.health.detail))
            say(f"{self.cp_id}: AVERÍA sent to central ({self.health.detail})")
        self.reported_ok = self.health.ok

    def _give_up(self, text: str) -> None:
        say(f"{self.cp_id}: {text}")
        self.exit_code = 1
        self.stop.set()

    def _on_central(self, msg: Message) -> None:
        if not isinstance(msg, CENTRAL_WORDS):
            log.warning("unexpected %s from central", msg.TYPE)
            return
        word: CentralWord = msg
        match word:
            case Challenge():
                self._on_challenge(word)
            case RegisterAccepted():
                self._on_accepted(word)
            case RegisterRejected():
                self._on_rejected(word)
            case ErrorFrame():
                say(f"{self.cp_id}: central reports a protocol error: {word.reason}")
            case HeartbeatAck():
                pass  # its arrival is what counts (last_rx)
            case PairChallenge():
                self._on_pair_challenge(word)
            case PairAccepted():
                self._on_paired(word)
            case PairRejected():
                self._on_pair_rejected(word)
            case _:
                assert_never(word)

    # ------------------------------------------------------------------ pairing
    def _on_pair_challenge(self, msg: PairChallenge) -> None:
        if self.pake is None:
            return
        try:
            self.pair_key = self.pake.finish(msg.pake)
        except ProtocolError as exc:
            self._give_up(f"central's pairing answer is not valid ({exc})")
            return
        self._send(PairProve(cp_id=self.cp_id,
                             confirm=pairing.client_confirm(self.pair_key, self.cp_id)))

    def _on_paired(self, msg: PairAccepted) -> None:
        if not self.pair_key:
            return
        key, self.pair_key, self.pake = self.pair_key, b"", None
        if not auth.same(pairing.central_confirm(key, self.cp_id), msg.confirm):
            self._give_up("central did not prove it knows the pairing code (not the real "
                          "central?); nothing was stored")
            return
        if self.credential is None:
            self.credential = Credential(self.cp_id)
        try:
            where = self.credential.store(pairing.credential(key, self.cp_id))
        except StoreError as exc:
            self._give_up(f"paired, but the credential cannot be stored: {exc}")
            return
        self.pair_code = None
        say(f"{self.cp_id}: paired with central at {self.central}; its credential is in "
            f"{where} (from now on no --pair is needed)")
        self._register()

    def _on_pair_rejected(self, msg: PairRejected) -> None:
        self.pake, self.pair_key = None, b""
        held = self._held_secret()
        if held is not None:  # paired already (a restart that still says --pair)
            self.pair_code = None
            say(f"{self.cp_id}: central refused the pairing ({msg.reason}); registering "
                "with the credential already here")
            self._lost("pairing refused")
            return
        self._give_up(f"central refused the pairing: {msg.reason}")

    def _held_secret(self) -> str | None:
        try:
            return self.credential.get() if self.credential is not None else None
        except StoreError:
            return None

    def _on_challenge(self, msg: Challenge) -> None:
        try:
            self.secret = self.credential.get() if self.credential is not None else None
        except StoreError as exc:
            self._give_up(str(exc))
            return
        if self.secret is None and not msg.required:  # served unproven: orders unsigned
            self.challenge = ""
            self._send(Prove(cp_id=self.cp_id))
            return
        if self.secret is None:
            self._send(Prove(cp_id=self.cp_id))  # "none here": central refuses, and says so
            where = self.credential.source if self.credential else "none given"
            self._give_up(f"central asks {self.cp_id} to prove its credential, but there "
                          f"is none here ({where}); pair it: type `pair {self.cp_id}` at "
                          "central's console and run this command once with --pair CODE "
                          f"(or copy central's credentials/{self.cp_id}.key here)")
            return
        self.challenge = msg.nonce
        self._send(Prove(cp_id=self.cp_id, proof=auth.register_proof(
            self.secret, self.cp_id, self.nonce, msg.nonce)))

    def _on_accepted(self, msg: RegisterAccepted) -> None:
        if not self.challenge and self._held_secret() is not None:
            # This CP holds its credential: a central that does not prove it knows it too
            # (it never challenged) is not served, or it could give unsigned orders.
            self._give_up(f"central accepted {self.cp_id} without proving it holds its "
                          "credential (its credential was revoked there, or this is not the "
                          f"real central); pair it again: `pair {self.cp_id}` at central's "
                          "console, then --pair CODE here")
            return
        if self.secret is not None and self.challenge:
            expected = auth.central_proof(self.secret, self.cp_id, self.nonce, self.challenge)
            key = auth.kafka_key(self.secret, self.nonce, self.challenge)
            if not auth.same(expected, msg.proof) or auth.key_id(key) != msg.key_id:
                self._lost("central could not prove it holds this CP's credential "
                           "(not the real central?)")
                return
            self.engine_keys.set(EngineKey(cp_id=self.cp_id, client_nonce=self.nonce,
                                           server_nonce=self.challenge, key_id=msg.key_id))
        else:  # served unproven: the engine is told its orders come unsigned
            self.engine_keys.set(EngineOpen(cp_id=self.cp_id))
        self.registered = True
        self.unavailable_since = None
        self.backoff = 0.5
        self.tried = 0
        # central knows the health the Register carried; a change since is told now
        self.reported_ok = self.registered_ok
        say(f"{self.cp_id}: registered with central at {self.central} "
            f"({msg.location}, {msg.price_eur_kwh:.2f} €/kWh)")
        self.next_beat = time.monotonic() + self.heartbeat
        self._report_health()
        self._tell_refusals()

    def _on_rejected(self, msg: RegisterRejected) -> None:
        if msg.code is RejectCode.STANDBY:
            # a failover may be under way: the other central, soon
            self.backoff = 0.5
            self._lost(f"{self.central} is the standby central ({msg.reason})")
        elif msg.code in (RejectCode.UNKNOWN, RejectCode.AUTH):
            self._give_up(f"central refused the registration: {msg.reason}")
        else:
            say(f"{self.cp_id}: central refused the registration: {msg.reason}")
            self._lost("registration refused")

    def _connect(self) -> None:
        try:
            sock = socket.create_connection(self.central.pair, timeout=2.0)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            self._retry_later(f"cannot reach central at {self.central} "
                              f"({exc.strerror or exc})")
            return
        self.link += 1
        self.sock = sock
        self.last_rx = time.monotonic()
        self.reader = threading.Thread(target=read_central, name="monitor-central",
                                       args=(sock, self.link, self.events, self.stop))
        self.reader.start()
        if self.pair_code is not None:
            try:
                self.pake = pairing.PakeSide(self.pair_code, self.cp_id, central=False)
            except ProtocolError as exc:
                self._give_up(f"--pair: {exc}")
                return
            self.pair_key = b""
            self._send(PairStart(cp_id=self.cp_id, pake=self.pake.outbound))
            return
        self._register()

    def _register(self) -> None:
        # Always a nonce: central answers with a challenge whenever it holds the CP's
        # credential, and the credential is looked up then (it may be a moment old).
        health = Health.OK if self.health is None or self.health.ok else Health.KO
        self.registered_ok = health is Health.OK
        self.nonce = auth.new_nonce()
        self.challenge = ""
        max_kw = self.health.max_kw if self.health is not None else 0.0
        self._send(Register(cp_id=self.cp_id, location=self.location, health=health,
                            nonce=self.nonce, max_kw=max_kw))

    def _send(self, msg: Message) -> None:
        if self.sock is None:
            return
        try:
            self.sock.settimeout(2.0)
            send_frame(self.sock, msg.to_wire())
        except OSError as exc:
            self._lost(f"cannot write to central ({exc.strerror or exc})")

    def _lost(self, reason: str) -> None:
        was = self.registered
        self.close()
        self._retry_later(reason if not was else f"lost central: {reason}")

    def _retry_later(self, reason: str) -> None:
        if self.unavailable_since is None:
            self.unavailable_since = time.time()
        self.tried += 1
        if len(self.centrals) > 1 and self.tried % len(self.centrals):
            # the next central at once; the backoff after a whole round
            self.central = self.centrals[(self.centrals.index(self.central) + 1)
                                         % len(self.centrals)]
            say(f"{self.cp_id}: {reason}; trying {self.central}")
            self.next_connect = time.monotonic()
            return
        if len(self.centrals) > 1:
            self.central = self.centrals[(self.centrals.index(self.central) + 1)
                                         % len(self.centrals)]
        say(f"{self.cp_id}: {reason}; central unavailable since "
            f"{stamp(self.unavailable_since)}; retrying in {self.backoff:g} s")
        self.next_connect = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, 5.0)

    def close(self) -> None:
        self.registered = False
        self.reported_ok = None
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        if self.reader is not None:
            self.reader.join(1.0)
            self.reader = None



"""EV_CP_M's rules and I/O threads (the Click command is in command.py).

Three threads: the engine checker (a health check every second, answer within
1 s), a reader of central's frames, and the main thread, which owns the state:
it registers, sends heartbeats, reports AVERÍA / OK the moment the engine's
health changes, and reconnects to central with backoff when the link is lost.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass

from evc.console import say, stamp
from evc.errors import ProtocolError
from evc.net import Address
from evc.protocol.framing import read_frames, recv_frame, send_frame
from evc.protocol.messages import (
    ErrorFrame,
    FaultReport,
    Health,
    HealthCheck,
    HealthReply,
    Heartbeat,
    HeartbeatAck,
    Message,
    RecoveryReport,
    Register,
    RegisterAccepted,
    RegisterRejected,
    RejectCode,
    from_wire,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str


@dataclass(frozen=True)
class CentralFrame:
    link: int
    message: Message


@dataclass(frozen=True)
class CentralLost:
    link: int
    reason: str


# ---------------------------------------------------------------------- engine checker


def check_engine(engine: Address, cp_id: str, events: queue.Queue[object],
                 stop: threading.Event, interval: float, answer_timeout: float) -> None:
    sock: socket.socket | None = None
    next_check = time.monotonic()
    while not stop.is_set():
        result: HealthResult
        try:
            if sock is None:
                sock = socket.create_connection(engine.pair, timeout=answer_timeout)
            sock.settimeout(answer_timeout)
            send_frame(sock, HealthCheck(cp_id=cp_id).to_wire())
            obj = recv_frame(sock)
            if obj is None:
                raise ConnectionError("engine closed the connection")
            reply = from_wire(obj)
            if not isinstance(reply, HealthReply):
                raise ProtocolError(f"unexpected {reply.TYPE!r}")
            if reply.status is Health.OK:
                result = HealthResult(True, "engine OK")
            else:
                result = HealthResult(False, f"engine answered KO ({reply.state or 'fault'})")
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


def read_central(sock: socket.socket, link: int, events: queue.Queue[object],
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

    def __init__(self, central: Address, cp_id: str, location: str, events: queue.Queue[object],
                 stop: threading.Event, heartbeat: float, central_timeout: float) -> None:
        self.central = central
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
        self.backoff = 0.5
        self.next_connect = 0.0
        self.next_beat = 0.0
        self.last_rx = 0.0
        self.exit_code = 0
        self.unavailable_since: float | None = time.time()  # until first registered

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

    def _handle(self, event: object) -> None:
        if isinstance(event, HealthResult):
            changed = self.health is None or self.health.ok != event.ok
            self.health = event
            if changed:
                say(f"{self.cp_id}: {event.detail}")
            self._report_health()
        elif isinstance(event, CentralFrame) and event.link == self.link:
            self.last_rx = time.monotonic()
            self._on_central(event.message)
        elif isinstance(event, CentralLost) and event.link == self.link and self.sock:
            self._lost(event.reason)

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

    def _on_central(self, msg: Message) -> None:
        if isinstance(msg, RegisterAccepted):
            self.registered = True
            self.unavailable_since = None
            self.backoff = 0.5
            self.reported_ok = self.health.ok if self.health else True
            say(f"{self.cp_id}: registered with central at {self.central} "
                f"({msg.location}, {msg.price_eur_kwh:.2f} €/kWh)")
            self.next_beat = time.monotonic() + self.heartbeat
            self._report_health()
        elif isinstance(msg, RegisterRejected):
            say(f"{self.cp_id}: central refused the registration: {msg.reason}")
            if msg.code is RejectCode.UNKNOWN:
                self.exit_code = 1
                self.stop.set()
            else:
                self._lost("registration refused")
        elif isinstance(msg, ErrorFrame):
            say(f"{self.cp_id}: central reports a protocol error: {msg.reason}")
        elif not isinstance(msg, HeartbeatAck):
            log.warning("unexpected %s from central", msg.TYPE)

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
        health = Health.OK if self.health is None or self.health.ok else Health.KO
        self.reader = threading.Thread(target=read_central, name="monitor-central",
                                       args=(sock, self.link, self.events, self.stop))
        self.reader.start()
        self._send(Register(cp_id=self.cp_id, location=self.location, health=health))

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



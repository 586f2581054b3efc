"""EV_Driver's rules (the Click command is in command.py).

For each CP id in the file: request, wait for the answer, follow the supply
live, end it after --charge-seconds, wait for the ticket, pause, next.
The consumer thread only filters this driver's messages onto a queue; the
main thread runs the sequence.

The driver survives its own death: a journal (``driver-<id>.json``) holds the
line of the file it is serving, the request in flight with its answer, and
how far it read its answers on control_topic. Restarted with the same id and
file, it shows the outcome of that request (live figures, then the ticket; or
the ticket if the supply ended meanwhile), ends the supply as it would have,
and goes on with the lines after it: never a served line requested again.

It never gives up because central or Kafka is away: it says "central
unavailable since …" and waits; its timeouts count only while central is there.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evc.console import say as console_say
from evc.console import stamp
from evc.driver import pairing as driver_pairing
from evc.errors import BusError, ConfigError, EvcError, ProtocolError, StoreError
from evc.netview import CentralWatch, NetworkView
from evc.ports import Journal, Send, Unconfirmed, Verdict, assert_never
from evc.protocol import auth
from evc.protocol.ids import is_id, printable
from evc.protocol.messages import (
    Authorization,
    CentralStatus,
    ChargeRequest,
    CPStatus,
    DenyCode,
    EndReason,
    EndRequest,
    Message,
    Removed,
    Telemetry,
    Ticket,
    from_wire,
)
from evc.protocol.topics import REQUESTS
from evc.store import JsonFile
from evc.store.credentials import Credential

log = logging.getLogger(__name__)


def say(text: str) -> None:
    console_say(text, millis=True)  # drivers' lines carry milliseconds: pauses are visible


@dataclass(frozen=True)
class Got:
    """A message for this driver (or central's heartbeat), from the consumer thread."""

    message: Message
    topic: str = ""
    partition: int = 0
    offset: int = -1
    live: bool = True  # written after the driver started reading (not history)


@dataclass(frozen=True)
class SendResult:
    """Kafka's verdict on a message this driver sent (``error`` None: it took it)."""

    msg_id: str
    error: BusError | None


def read_requests(path: Path) -> list[str]:
    """CP ids, one per line; blank lines and # comments skipped, bad lines warned."""
    return [cp for _, cp in numbered_requests(path)]


def numbered_requests(path: Path) -> list[tuple[int, str]]:
    """(line number, CP id) for every request line of the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"request file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"request file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read request file {path}: {exc.strerror}") from None
    ids: list[tuple[int, str]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not is_id(line):
            say(f"warning: {path}:{lineno}: {printable(raw.strip(), 40)!r} is not a CP id; "
                "skipped")
            continue
        ids.append((lineno, line))
    return ids


def file_identity(path: Path) -> str:
    """Where the file is and what it holds: a restart goes on only with the same file."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"{path.resolve()}#{digest}"


def claim_journal(journal: JsonFile, network: str, driver_id: str) -> dict[str, Any]:
    """This driver's journal, if it is of this network (``network``: the Kafka cluster's
    id and the topic prefix). One of another network (a new broker, another demo run) is
    set aside at once: its request in flight was never this network's to follow."""
    state = journal.load()
    theirs = state.get("network")
    if theirs is not None and theirs != network:
        aside = journal.set_aside(time.strftime("other-network-%Y%m%d-%H%M%S"))
        say(f"{driver_id}: {journal.path.name} is from another network (Kafka cluster and "
            f"prefix {theirs!r}, this one is {network!r}): set aside as {aside.name}; "
            "starting afresh")
        return {}
    return state


PROMPT = "CP id, or list (empty line or Ctrl+D to finish)> "


def read_lines(lines: queue.Queue[str | None], stop: threading.Event) -> None:
    """Typed lines -> ``lines`` (None at the end of input). A daemon thread: readline()
    cannot be interrupted, and this thread owns nothing."""
    while not stop.is_set():
        line = sys.stdin.readline()
        if not line:
            lines.put(None)
            return
        lines.put(line)


def available_lines(view: NetworkView) -> list[str]:
    """What `--list` and the prompt's `list` print: the CPs free to supply now."""
    out = []
    if view.central_available():
        out.append("central is available")
    else:
        since = view.unavailable_since()
        out.append("central unavailable" + (f" since {stamp(since)}" if since else "")
                   + ": no CP can start a supply now")
    free = view.available()
    out.append(f"{len(free)} of {len(view.cps)} charge points available"
               + (":" if free else ""))
    for s in free:
        out.append(f"  {s.cp_id:<8} {printable(s.location, 40):<40} "
                   f"{s.price_eur_kwh:.2f} €/kWh")
    return out


REASON_WORDS = {
    EndReason.FINISHED: "you ended it",
    EndReason.UNPLUGGED: "unplugged at the charge point",
    EndReason.STOPPED: "the operator stopped the charge point",
    EndReason.FAULT: "the charge point failed",
    EndReason.DISCONNECTED: "central lost the charge point",
    EndReason.NO_ENGINE: "the charge point never started supplying",
    EndReason.REFUSED: "the charge point refused to start; the operator sees why",
    EndReason.TIME_LIMIT: "the longest supply allowed was reached",
    EndReason.LOCAL: "stopped at the charger",
    EndReason.POWER_LOSS: "the charger lost its power",
    EndReason.EMERGENCY_STOP: "the charger's emergency stop",
    EndReason.RESET: "the charger was reset",
    EndReason.DEAUTHORIZED: "the card was refused",
    EndReason.OTHER: "ended by the charger",
    EndReason.CENTRAL_RESTART: "central restarted during the supply",
}
"""A ticket's reason in words, for the person at the driver's screen."""


def _proof_denied(message: Message) -> bool:
    return (isinstance(message, Authorization) and not message.authorized and not message.mac
            and message.code in (DenyCode.BAD_PROOF, DenyCode.UNKNOWN_DRIVER))


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


class Driver:
    def __init__(self, send: Send, driver_id: str, inbox: queue.Queue[Got | SendResult],
                 stop: threading.Event, *, journal: Journal, timeout: float,
                 charge_seconds: float, pause: float, live: bool,
                 central_timeout: float = 3.0, ticket_timeout: float = 60.0,
                 caught_up: threading.Event | None = None,
                 credential: Credential | None = None,
                 watch_cp: Callable[[str], None] = lambda _cp: None,
                 network: str = "", max_kw: float = 0.0) -> None:
        self.driver_id = driver_id
        self.max_kw = max_kw  # the EV's own limit, asked with each request (0: none)
        self.inbox = inbox
        self.stop = stop
        self.journal = journal
        self.timeout = timeout
        self.charge_seconds = charge_seconds
        self.pause = pause
        self.live = live
        self.central_timeout = central_timeout
        self.ticket_timeout = max(ticket_timeout, timeout)
        self.summary = {"requested": 0, "authorized": 0, "denied": 0, "unanswered": 0,
                        "tickets": 0}
        self.state: dict[str, Any] = journal.load()
        if self.state.get("driver_id") not in (None, driver_id):
            raise ConfigError(f"journal {getattr(journal, 'path', '')} belongs to driver "
                              f"{self.state.get('driver_id')}")
        self.state["driver_id"] = driver_id
        if network:  # which network this journal follows (claim_journal)
            self.state["network"] = network
        self.control_pos: dict[str, int] = dict(self.state.get("control", {}))
        self.network = NetworkView(central_timeout)  # CPs' public states, central's pulse
        self.caught_up = caught_up or threading.Event()  # network_topic's history is read
        # With a credential (the authenticated level) requests are signed, and answers and
        # tickets that do not carry central's signature for this driver are ignored.
        self.credential = credential
        self.watch_cp = watch_cp  # read the live readings of this CP only (its partition)
        self._warned = False
        self.central_watch = CentralWatch(
            self.network, say,
            lost=lambda since: f"{driver_id}: central unavailable since {stamp(since)}; "
                               "waiting for it",
            back=lambda away: f"{driver_id}: central is back (away {away:.0f} s)")
        # what this driver sent, until Kafka confirms it (signed once its key is known)
        inbox = self.inbox
        self._unsent = Unconfirmed(send,
                                   lambda msg_id, error: inbox.put(SendResult(msg_id, error)),
                                   say=lambda text: say(f"{driver_id}: {text}"),
                                   sign=self._signed)

    @property
    def key(self) -> str | None:
        """This driver's signing key, once its credential is there (looked up until then)."""
        if self.credential is None:
            return None
        secret = self.credential.get()
        if secret is None:
            if not self._warned:
                self._warned = True
                say(f"{self.driver_id}: no credential ({self.credential.source}): requests "
                    "go unsigned (a central at the authenticated level refuses them)")
            return None
        return auth.driver_key(secret)

    # ------------------------------------------------------------------ the journal
    def _save(self) -> None:
        self.state["control"] = self.control_pos
        try:
            self.journal.save(self.state)
        except EvcError as exc:  # a full disk must not stop the driver
            log.error("cannot save the journal: %s", exc)

    @staticmethod
    def start_offsets(state: dict[str, Any], topic: str) -> dict[tuple[str, int], int]:
        """Where a restarted driver resumes reading its answers (control partitions)."""
        if not state.get("current"):
            return {}
        return {(topic, int(p)): int(off) for p, off in state.get("control", {}).items()}

    # ------------------------------------------------------------------ the sequence
    def run_file(self, path: Path) -> None:
        lines = numbered_requests(path)
        ident = file_identity(path)
        if self.state.get("file") != ident:
            if self.state.get("file"):
                say(f"{self.driver_id}: {path.name} is not the file of the last run: "
                    "starting it from its first line")
            if self.state.get("current"):  # its line was in another file
                self.state["current"]["line"] = None
            self.state.update(file=ident, next=0)
            self._save()
        elif self.state.get("next") or self.state.get("current"):
            say(f"{self.driver_id}: resuming {path.name} after its first "
                f"{self.state.get('next', 0)} requests")
        self.resume()
        start = int(self.state.get("next", 0))
        say(f"{self.driver_id}: {len(lines) - start} requests from {path}")
        first = not self.state.get("served_any")
        for index in range(start, len(lines)):
            if self.stop.is_set():
                return
            if not first and not self._pause():
                return
            first = False
            self.request(lines[index][1], index)
        if not self.stop.is_set():  # the file is done: a new run starts it from the top
            self.state.update(file=None, next=0)
            self._save()

    def run_prompt(self, lines: queue.Queue[str | None]) -> None:
        """CP ids (or `list`) typed at a prompt; central's pulse is watched meanwhile."""
        self.resume()
        while not self.stop.is_set():
            _write(PROMPT)
            while True:
                try:
                    line = lines.get_nowait()
                    break
                except queue.Empty:
                    self._next(0.2)  # heartbeats: "central unavailable" while idle too
                    if self.stop.is_set():
                        return
            word = (line or "").strip()
            if not word:
                return
            if word.lower() in ("list", "ls", "lista"):
                self.drain()
                for text in available_lines(self.network):
                    say(f"{self.driver_id}: {text}")
            elif not is_id(word):
                say(f"warning: {printable(word, 40)!r} is not a CP id")
            else:
                self.request(word, None)

    def drain(self) -> None:
        """Take in network_topic's history and wait briefly for central's pulse."""
        deadline = time.monotonic() + 5
        while (not self.caught_up.is_set() and time.monotonic() < deadline
               and not self.stop.is_set()):
            self._next(0.1)
        beat_by = time.monotonic() + self.central_timeout
        while (not self.central_available() and time.monotonic() < beat_by
               and not self.stop.is_set()):
            self._next(0.1)
        while not self.inbox.empty():
            self._next(0)

    def _pause(self) -> bool:
        """The pause between requests; a restart waits only what is left of it."""
        until = float(self.state.get("pause_until", 0.0))
        remaining = min(self.pause, until - time.time()) if until else self.pause
        # reading meanwhile: central's heartbeats keep its pulse fresh (a driver that
        # only slept took the 4 s pause for central's silence), and its loss is said now
        deadline = time.monotonic() + max(0.0, remaining)
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self._next(left)
        return False

    def resume(self) -> None:
        """After a restart: see the request that was in flight through to its end."""
        current = self.state.get("current")
        if not current:
            return
        try:
            request = from_wire(current["request"])
            answer = from_wire(current["answer"]) if current.get("answer") else None
        except (ProtocolError, KeyError, TypeError) as exc:
            say(f"{self.driver_id}: the journal's request is unreadable ({exc}); dropped")
            self.state["current"] = None
            return
        assert isinstance(request, ChargeRequest)
        self.watch_cp(request.cp_id)
        say(f"{self.driver_id}: back after a stop; following my request at {request.cp_id} "
            f"of {stamp(request.ts)}")
        self.summary["requested"] += 1
        if answer is None:
            self._send(REQUESTS, request, request.cp_id)  # the same id: answered once
            answer = self._await_answer(request)
            if answer is None:
                return
        assert isinstance(answer, Authorization)
        if answer.authorized and current.get("end_sent"):
            # the end request may have died with the process, still in its buffer: again
            # (central ignores a second end of a supply it is already ending)
            self._send(REQUESTS, EndRequest(driver_id=self.driver_id, cp_id=answer.cp_id,
                                            session_id=answer.session_id), answer.cp_id)
        self._answered(request, answer, current.get("line"))

    def request(self, cp_id: str, line: int | None) -> None:
        self.watch_cp(cp_id)
        while not self.inbox.empty():  # the latest word of the network
            self._next(0)
        why = self.network.why_not(cp_id)
        if why is not None:  # central decides; the driver just knows what the network says
            say(f"{self.driver_id}: {why} right now; asking central anyway")
        req = ChargeRequest(driver_id=self.driver_id, cp_id=cp_id, max_kw=self.max_kw)
        # Journal first: killed after this line, a restart sends the same request again.
        self.state["current"] = {"request": req.to_wire(), "line": line}
        self._save()
        self._send(REQUESTS, req, cp_id)
        self.summary["requested"] += 1
        say(f"{self.driver_id}: requested a charge at {cp_id}")
        answer = self._await_answer(req)
        if answer is not None:
            self._answered(req, answer, line)

    # ------------------------------------------------------------------ pairing
    def pair(self, code: str) -> bool:
        """``--pair CODE`` (driver/pairing.py): True when the credential is stored here."""
        return driver_pairing.pair(self, code, say)

    def store_credential(self, secret: str) -> bool:
        """A credential made by pairing, stored where this driver looks for it."""
        if self.credential is None:
            self.credential = Credential(self.driver_id)
        try:
            where = self.credential.store(secret)
        except StoreError as exc:
            say(f"{self.driver_id}: paired, but the credential cannot be stored: {exc}")
            return False
        self._warned = False
        say(f"{self.driver_id}: paired with central; its credential is in {where} (from "
            "now on no --pair is needed)")
        return True

    def submit(self, message: Message, key: str) -> None:
        """Sent to requests_topic until Kafka confirms it (as every request is)."""
        self._unsent.submit(message.msg_id, REQUESTS, message, key)

    def next_message(self, timeout: float) -> Message | None:
        """The next record for this driver (heartbeats and send results handled)."""
        return self._next(timeout)

    def countdown(self, budget: float) -> Iterator[float]:
        return self._countdown(budget)

    def _answered(self, req: ChargeRequest, answer: Authorization, line: int | None) -> None:
        if not answer.authorized:
            self.summary["denied"] += 1
            say(f"{self.driver_id}: DENIED at {req.cp_id}: {answer.reason}")
            self._served(line)
            return
        self.summary["authorized"] += 1
        current = self.state.setdefault("current", {})
        if not current.get("answer"):
            current.update(answer=answer.to_wire(), authorized_at=time.time())
            self._save()
            say(f"{self.driver_id}: AUTHORIZED at {req.cp_id} ({answer.price_eur_kwh:.2f} "
                "€/kWh): plug in your vehicle")
        if self._follow(answer):
            self._served(line)

    def _served(self, line: int | None) -> None:
        """The request is over (denied, ticketed or unanswered): the next line is due."""
        self.state["current"] = None
        self.state["served_any"] = True
        self.state["pause_until"] = time.time() + self.pause
        if line is not None:
            self.state["next"] = line + 1
        self._save()

    # ------------------------------------------------------------------ waiting
    def _next(self, timeout: float) -> Message | None:
        """The next message for the sequence; heartbeats and send results handled here."""
        try:
            item = self.inbox.get(timeout=max(0.0, min(timeout, 0.2)))
        except queue.Empty:
            item = None
        self._unsent.resend_due()
        message: Message | None = None
        match item:
            case None:
                pass
            case SendResult():
                self._on_send_result(item)
            case Got():
                message = self._take(item)
            case _:
                assert_never(item)
        self._watch_central()
        return message

    def _take(self, got: Got) -> Message | None:
        """A record from Kafka: an answer or ticket (checked), the network's news (taken
        in here), or a reading for the sequence."""
        match got.message:
            case Authorization() | Ticket() if got.topic and got.offset >= 0:
                self.control_pos[str(got.partition)] = got.offset + 1
                signing = self.key
                if _proof_denied(got.message):
                    # central cannot sign it: it does not hold this driver's key (a wrong
                    # or revoked credential here). Believed as a denial only, said as such.
                    pass
                elif signing is not None and not auth.verify(got.message, signing):
                    say(f"{self.driver_id}: ignored a forged {got.message.TYPE} (it does "
                        "not carry central's signature)")
                    return None
                if got.live:  # an answer written now: central is there
                    self.network.heard_central()
            case CentralStatus() | CPStatus() | Removed():
                self.network.apply(got.message, got.live)
                return None
        return got.message

    def central_available(self) -> bool:
        """Central's heartbeat is fresh (timeouts count only then)."""
        return self.network.central_available()

    def _watch_central(self) -> None:
        # not while records wait in the inbox: a heartbeat may be among them
        self.central_watch.check(hold=not self.inbox.empty())

    def _countdown(self, budget: float) -> Iterator[float]:
        """Seconds left of ``budget``, counted only while central is available."""
        left = budget
        last = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if self.central_available():
                left -= now - last
            last = now
            yield left

    def _await_answer(self, req: ChargeRequest) -> Authorization | None:
        for left in self._countdown(self.timeout):
            if left <= 0:
                self.summary["unanswered"] += 1
                say(f"{self.driver_id}: central did not answer within {self.timeout:g} s "
                    f"(request for {req.cp_id})")
                self._served(self.state.get("current", {}).get("line"))
                return None
            msg = self._next(left)
            if isinstance(msg, Authorization) and msg.request_id == req.msg_id:
                return msg
        return None

    def _follow(self, auth: Authorization) -> bool:
        """Live figures until the ticket; ask to end after --charge-seconds.

        True when the supply is over for this driver (ticket, or none in time);
        False when the driver is stopping (the journal keeps it for a restart).
        """
        current = self.state["current"]
        end_at = float(current.get("authorized_at", time.time())) + self.charge_seconds
        waiting_ticket = self._countdown(self.ticket_timeout)
        while True:
            if self.stop.is_set():  # leaving: the supply ends; a restart shows its ticket
                if not current.get("end_sent"):
                    self._send_end(auth)
                return False
            if not current.get("end_sent") and time.time() >= end_at:
                self._send_end(auth)
            if current.get("end_sent"):
                left = next(waiting_ticket)
                if left <= 0:
                    say(f"{self.driver_id}: no ticket from central within "
                        f"{self.ticket_timeout:g} s for the supply at {auth.cp_id}")
                    return True
            match self._next(1.0):
                case Telemetry() as reading if reading.session_id == auth.session_id:
                    if self.live and not reading.final:
                        power = "" if reading.kw is None else (
                            ", waiting for power (en espera)" if reading.kw <= 0
                            else f", {reading.kw:.1f} kW")
                        say(f"{self.driver_id}: live at {reading.cp_id}: "
                            f"{reading.consumo_kwh:.2f} kWh, {reading.importe_eur:.2f} €"
                            + power)
                case Ticket() as ticket if ticket.session_id == auth.session_id:
                    self.summary["tickets"] += 1
                    duration = ticket.ended_at - ticket.started_at
                    say(f"{self.driver_id}: TICKET at {ticket.cp_id}: "
                        f"{ticket.consumo_kwh:.2f} kWh, {ticket.importe_eur:.2f} € "
                        f"({ticket.price_eur_kwh:.2f} €/kWh), {duration:.0f} s, "
                        f"ended: {ticket.reason} ({REASON_WORDS[ticket.reason]})")
                    return True
                case _:  # another session's, or nothing this second
                    pass

    def _send_end(self, auth: Authorization) -> None:
        self.state["current"]["end_sent"] = time.time()
        self._save()
        self._send(REQUESTS, EndRequest(driver_id=self.driver_id, cp_id=auth.cp_id,
                                        session_id=auth.session_id), auth.cp_id)
        say(f"{self.driver_id}: asked to end the supply at {auth.cp_id}")

    # ------------------------------------------------------------------ sending
    def _send(self, topic: str, message: Message, key: str) -> None:
        """Queue ``message``; one Kafka does not confirm is sent again until it does (a
        permanent refusal is said and not sent again)."""
        self._unsent.submit(message.msg_id, topic, message, key)

    def _signed(self, message: Message) -> Message:
        """Signed with this driver's key, with a credential (the authenticated level)."""
        signing = self.key
        if signing is not None and not message.mac:
            return auth.sign(message, signing)
        return message

    def _on_send_result(self, result: SendResult) -> None:
        pending = self._unsent.pending.get(result.msg_id)
        if self._unsent.settle(result.msg_id, result.error) is Verdict.RETRYING:
            assert pending is not None
            say(f"{self.driver_id}: Kafka did not take my {pending.message.TYPE} "
                f"({result.error}); sending it again")

"""EV_Driver's rules (the Click command is in command.py).

For each CP id in the file: request, wait for the answer, follow the supply
live, end it after --charge-seconds, wait for the ticket, pause, next.
The consumer thread only filters this driver's messages onto a queue; the
main thread runs the sequence.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from evc.bus import KafkaBus
from evc.console import say as console_say
from evc.errors import ConfigError
from evc.protocol.ids import is_id, printable
from evc.protocol.messages import (
    Authorization,
    ChargeRequest,
    EndRequest,
    Message,
    Telemetry,
    Ticket,
)
from evc.protocol.topics import REQUESTS

log = logging.getLogger(__name__)


def say(text: str) -> None:
    console_say(text, millis=True)  # drivers' lines carry milliseconds: pauses are visible


def read_requests(path: Path) -> list[str]:
    """CP ids, one per line; blank lines and # comments skipped, bad lines warned."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"request file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"request file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read request file {path}: {exc.strerror}") from None
    ids: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not is_id(line):
            say(f"warning: {path}:{lineno}: {printable(raw.strip(), 40)!r} is not a CP id; "
                "skipped")
            continue
        ids.append(line)
    return ids


def prompt_requests(stop: threading.Event) -> Iterator[str]:
    while not stop.is_set():
        try:
            sys.stdout.write("CP id (empty line or Ctrl+D to finish)> ")
            sys.stdout.flush()
        except (OSError, ValueError):
            return
        line = sys.stdin.readline()
        if not line or not line.strip():
            return
        cp_id = line.strip()
        if not is_id(cp_id):
            say(f"warning: {printable(cp_id, 40)!r} is not a CP id")
            continue
        yield cp_id


class Driver:
    def __init__(self, bus: KafkaBus, driver_id: str, inbox: queue.Queue[Message],
                 stop: threading.Event, *, timeout: float, charge_seconds: float,
                 pause: float, live: bool) -> None:
        self.bus = bus
        self.driver_id = driver_id
        self.inbox = inbox
        self.stop = stop
        self.timeout = timeout
        self.charge_seconds = charge_seconds
        self.pause = pause
        self.live = live
        self.summary = {"requested": 0, "authorized": 0, "denied": 0, "unanswered": 0,
                        "tickets": 0}

    def run(self, cp_ids: Iterator[str] | list[str]) -> None:
        first = True
        for cp_id in cp_ids:
            if self.stop.is_set():
                return
            if not first and self.stop.wait(self.pause):
                return
            first = False
            self.request(cp_id)

    def _next(self, deadline: float) -> Message | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            return self.inbox.get(timeout=min(remaining, 0.2))
        except queue.Empty:
            return None

    def request(self, cp_id: str) -> None:
        req = ChargeRequest(driver_id=self.driver_id, cp_id=cp_id)
        self.bus.send(REQUESTS, req, cp_id)
        self.bus.flush()
        self.summary["requested"] += 1
        say(f"{self.driver_id}: requested a charge at {cp_id}")
        answer = self._await_answer(req)
        if answer is None:
            return
        if not answer.authorized:
            self.summary["denied"] += 1
            say(f"{self.driver_id}: DENIED at {cp_id}: {answer.reason}")
            return
        self.summary["authorized"] += 1
        say(f"{self.driver_id}: AUTHORIZED at {cp_id} ({answer.price_eur_kwh:.2f} €/kWh): "
            "plug in your vehicle")
        self._follow(answer)

    def _await_answer(self, req: ChargeRequest) -> Authorization | None:
        deadline = time.monotonic() + self.timeout
        while not self.stop.is_set():
            if time.monotonic() >= deadline:
                self.summary["unanswered"] += 1
                say(f"{self.driver_id}: central did not answer within {self.timeout:g} s "
                    f"(request for {req.cp_id})")
                return None
            msg = self._next(deadline)
            if isinstance(msg, Authorization) and msg.request_id == req.msg_id:
                return msg
        return None

    def _follow(self, auth: Authorization) -> None:
        """Live figures until the ticket; ask to end after --charge-seconds."""
        end_at = time.monotonic() + self.charge_seconds
        end_sent = False
        ticket_deadline = end_at + self.timeout
        while True:
            if self.stop.is_set():
                if not end_sent:
                    self._send_end(auth)
                return
            now = time.monotonic()
            if not end_sent and now >= end_at:
                self._send_end(auth)
                end_sent = True
                ticket_deadline = now + self.timeout
            if now >= ticket_deadline:
                say(f"{self.driver_id}: no ticket from central within {self.timeout:g} s "
                    f"for the supply at {auth.cp_id}")
                break
            msg = self._next(ticket_deadline)
            if isinstance(msg, Telemetry) and msg.session_id == auth.session_id:
                if self.live and not msg.final:
                    say(f"{self.driver_id}: live at {msg.cp_id}: {msg.consumo_kwh:.2f} kWh, "
                        f"{msg.importe_eur:.2f} €")
            elif isinstance(msg, Ticket) and msg.session_id == auth.session_id:
                self.summary["tickets"] += 1
                duration = msg.ended_at - msg.started_at
                say(f"{self.driver_id}: TICKET at {msg.cp_id}: {msg.consumo_kwh:.2f} kWh, "
                    f"{msg.importe_eur:.2f} € ({msg.price_eur_kwh:.2f} €/kWh), "
                    f"{duration:.0f} s, ended: {msg.reason}")
                break

    def _send_end(self, auth: Authorization) -> None:
        self.bus.send(REQUESTS, EndRequest(driver_id=self.driver_id, cp_id=auth.cp_id,
                                           session_id=auth.session_id), auth.cp_id)
        self.bus.flush()
        say(f"{self.driver_id}: asked to end the supply at {auth.cp_id}")



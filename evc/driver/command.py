"""`evc driver <kafka_host:port> <driver_id> --file requests.txt` — EV_Driver.

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

import click

from evc.bus import CONTROL, REQUESTS, TELEMETRY, KafkaBus
from evc.errors import ConfigError, EvcError
from evc.protocol.messages import (
    Authorization,
    ChargeRequest,
    EndRequest,
    Message,
    Telemetry,
    Ticket,
)
from evc.runtime import install_stop_signals, join_all, parse_address, setup_logging
from evc.runtime import say as runtime_say

log = logging.getLogger("evc.driver")


def say(text: str) -> None:
    runtime_say(text, millis=True)  # drivers' lines carry milliseconds: pauses are visible


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
        if len(line) > 64 or any(c.isspace() for c in line) or not line.isprintable():
            say(f"warning: {path}:{lineno}: {raw.strip()[:40]!r} is not a CP id; skipped")
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
        if any(c.isspace() for c in cp_id) or len(cp_id) > 64:
            say(f"warning: {cp_id[:40]!r} is not a CP id")
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
        self.current: Authorization | None = None
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
        self.current = auth
        end_at = time.monotonic() + self.charge_seconds
        end_sent = False
        ticket_deadline = end_at + self.timeout
        while True:
            if self.stop.is_set():
                if not end_sent:
                    self._send_end(auth)
                self.current = None
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
        self.current = None

    def _send_end(self, auth: Authorization) -> None:
        self.bus.send(REQUESTS, EndRequest(driver_id=self.driver_id, cp_id=auth.cp_id,
                                           session_id=auth.session_id), auth.cp_id)
        self.bus.flush()
        say(f"{self.driver_id}: asked to end the supply at {auth.cp_id}")


@click.command()
@click.argument("kafka")
@click.argument("driver_id")
@click.option("--file", "file_", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CP ids, one per line (# comments). Without it: an interactive prompt.")
@click.option("--charge-seconds", type=click.FloatRange(0, 86400), default=8.0,
              show_default=True, help="How long each supply lasts before the driver ends it.")
@click.option("--pause", type=click.FloatRange(0, 3600), default=4.0, show_default=True,
              help="Seconds to wait after a ticket (or a denial) before the next request.")
@click.option("--timeout", type=click.FloatRange(0.5, 3600), default=10.0, show_default=True,
              help="Seconds to wait for central's answer or ticket.")
@click.option("--live/--no-live", default=True, show_default=True,
              help="Show this driver's live telemetry.")
@click.option("--topic-prefix", default="", help="Prefix of the Kafka topic names.")
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-file", type=click.Path(dir_okay=False), default=None)
def driver(kafka: str, driver_id: str, file_: Path | None, charge_seconds: float, pause: float,
           timeout: float, live: bool, topic_prefix: str, log_level: str,
           log_file: str | None) -> None:
    """EV_Driver: asks central for charges at the CPs listed in --file, one after another."""
    try:
        run_driver(kafka, driver_id, file_, charge_seconds, pause, timeout, live,
                   topic_prefix, log_level, log_file)
    except EvcError as exc:
        raise click.ClickException(str(exc)) from None


def run_driver(kafka: str, driver_id: str, file_: Path | None, charge_seconds: float,
               pause: float, timeout: float, live: bool, topic_prefix: str,
               log_level: str, log_file: str | None) -> None:
    setup_logging(log_level, log_file)
    if not driver_id or len(driver_id) > 64 or any(c.isspace() for c in driver_id):
        raise ConfigError(f"bad driver id {driver_id!r}: 1-64 characters, no spaces")
    kafka_addr = parse_address(kafka, what="Kafka address")
    cp_ids = read_requests(file_) if file_ is not None else None
    stop = threading.Event()
    install_stop_signals(stop)
    with KafkaBus(str(kafka_addr), prefix=topic_prefix, client_id=f"evc-driver-{driver_id}") as bus:
        inbox: queue.Queue[Message] = queue.Queue()
        bus.ensure_topics()  # idempotent: whoever starts first creates them
        consumer = bus.consumer([CONTROL, TELEMETRY])

        def mine(msg: Message, _delivery: object) -> None:
            if isinstance(msg, (Authorization, Ticket, Telemetry)) and msg.driver_id == driver_id:
                inbox.put(msg)

        thread = threading.Thread(target=consumer.run, args=(mine, stop), name="driver-kafka")
        thread.start()
        d = Driver(bus, driver_id, inbox, stop, timeout=timeout, charge_seconds=charge_seconds,
                   pause=pause, live=live)
        try:
            if cp_ids is not None:
                say(f"{driver_id}: {len(cp_ids)} requests from {file_}")
                d.run(cp_ids)
            else:
                d.run(prompt_requests(stop))
        finally:
            stop.set()
            join_all([thread], timeout=1.5)
        s = d.summary
        say(f"{driver_id}: done: {s['requested']} requested, {s['authorized']} authorized, "
            f"{s['denied']} denied, {s['unanswered']} unanswered, {s['tickets']} tickets")

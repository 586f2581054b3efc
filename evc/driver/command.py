"""`evc driver <kafka_host:port> <driver_id> --file requests.txt` — EV_Driver."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import click

from evc.bus import KafkaBus
from evc.driver.driver import Driver, prompt_requests, read_requests, say
from evc.lifecycle import Crew, install_stop_signals
from evc.logs import setup_logging
from evc.net import Address
from evc.options import ADDRESS, ID, Common, common_options
from evc.protocol.messages import Authorization, Message, Telemetry, Ticket
from evc.protocol.topics import CONTROL, TELEMETRY


@click.command()
@click.argument("kafka", type=ADDRESS)
@click.argument("driver_id", type=ID)
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
@common_options
def driver(kafka: Address, driver_id: str, file_: Path | None, charge_seconds: float,
           pause: float, timeout: float, live: bool, common: Common) -> None:
    """EV_Driver: asks central for charges at the CPs listed in --file, one after another."""
    setup_logging(common.log_level, common.log_file)
    cp_ids = read_requests(file_) if file_ is not None else None
    stop = threading.Event()
    install_stop_signals(stop)
    crew = Crew(stop)
    with KafkaBus(str(kafka), prefix=common.topic_prefix,
                  client_id=f"evc-driver-{driver_id}") as bus:
        inbox: queue.Queue[Message] = queue.Queue()
        bus.ensure_topics()  # idempotent: whoever starts first creates them
        consumer = bus.consumer([CONTROL, TELEMETRY])

        def mine(msg: Message, _delivery: object) -> None:
            if isinstance(msg, (Authorization, Ticket, Telemetry)) and msg.driver_id == driver_id:
                inbox.put(msg)

        crew.spawn(consumer.run, mine, stop, name="driver-kafka")
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
            crew.join(1.5)
        crew.check()
        s = d.summary
        say(f"{driver_id}: done: {s['requested']} requested, {s['authorized']} authorized, "
            f"{s['denied']} denied, {s['unanswered']} unanswered, {s['tickets']} tickets")

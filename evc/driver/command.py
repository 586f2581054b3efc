"""`evc driver <kafka_host:port> <driver_id> --file requests.txt` — EV_Driver."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import click

from evc.bus import open_bus, retrying
from evc.driver.driver import (
    Driver,
    Got,
    SendResult,
    available_lines,
    claim_journal,
    read_lines,
    read_requests,
    say,
)
from evc.lifecycle import Crew, install_stop_signals
from evc.logs import setup_logging
from evc.net import Bootstrap
from evc.netview import NetworkView, read_current
from evc.options import ID, KAFKA, Common, common_options, credentials_option, pair_option
from evc.protocol.messages import (
    Authorization,
    CentralStatus,
    CPStatus,
    DriverPairChallenge,
    DriverPairResult,
    Message,
    Removed,
    SiteStatus,
    Telemetry,
    Ticket,
)
from evc.protocol.topics import CONTROL, NETWORK, TELEMETRY, Delivery
from evc.store import JsonFile
from evc.store.credentials import Credential

SHOWN_GATHER = 0.2  # seconds the broker may gather what is only shown, while busy


@click.command()
@click.argument("kafka", type=KAFKA)
@click.argument("driver_id", type=ID)
@click.option("--file", "file_", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CP ids, one per line (# comments). Without it: an interactive prompt.")
@click.option("--charge-seconds", type=click.FloatRange(0, 86400), default=8.0,
              show_default=True, help="How long each supply lasts before the driver ends it.")
@click.option("--pause", type=click.FloatRange(0, 3600), default=4.0, show_default=True,
              help="Seconds to wait after a ticket (or a denial) before the next request.")
@click.option("--timeout", type=click.FloatRange(0.5, 3600), default=10.0, show_default=True,
              help="Seconds to wait for central's answer (counted while central is there).")
@click.option("--max-kw", type=click.FloatRange(0, 1000), default=0.0,
              help="The most this EV takes, in kW (a share of a site's limit is never "
                   "more); 0: whatever the CP gives.")
@click.option("--live/--no-live", default=True, show_default=True,
              help="Show this driver's live telemetry.")
@click.option("--list", "list_only", is_flag=True,
              help="Print the charge points available now (and whether central is there), "
                   "then exit.")
@credentials_option("This driver's", "<driver_id>")
@pair_option("over Kafka")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("data"), show_default=True,
              help="Folder of the driver's journal (driver-<id>.json): restarted with the "
                   "same id and file, the driver goes on where it stopped.")
@common_options
def driver(kafka: Bootstrap, driver_id: str, file_: Path | None, charge_seconds: float,
           pause: float, timeout: float, max_kw: float, live: bool, list_only: bool,
           credentials: Path | None, pair_code: str | None, state_dir: Path,
           common: Common) -> None:
    """EV_Driver: asks central for charges at the CPs listed in --file, one after another.

    Without --file, a prompt: type a CP id to charge there, `list` for the CPs available
    now, an empty line to finish.
    """
    setup_logging(common.log_level, common.log_file)
    if list_only:
        list_available(kafka, driver_id, common)
        return
    if file_ is not None:
        read_requests(file_)  # a missing or unreadable file is a clear error now
    credential = Credential(driver_id, credentials)
    credential.get()  # a broken file is a clear error now; a missing one is said later
    journal = JsonFile(state_dir / f"driver-{driver_id}.json")
    journal.load()  # an unreadable one is a clear error now
    stop = threading.Event()
    install_stop_signals(stop)
    crew = Crew(stop)
    with open_bus(str(kafka), prefix=common.topic_prefix, client_id=f"evc-driver-{driver_id}",
                  wait=common.kafka_wait, stop=stop, note=say, sasl=common.sasl) as bus:
        inbox: queue.Queue[Got | SendResult] = queue.Queue()
        control = bus.topic(CONTROL)
        network_id = f"{bus.cluster_id}/{common.topic_prefix}"
        state = claim_journal(journal, network_id, driver_id)
        # Three readers, so that what the driver waits for is never behind what it only
        # shows: answers and tickets (only this driver's partition of control_topic, from
        # where it stopped reading); the network (network_topic whole: every CP's state
        # and central's heartbeat); live readings (only the partition of the CP it
        # charges at, which carries a share of the whole network's readings). The last
        # two let the broker gather records while they are busy (see bus.Consumer).
        consumer = retrying(lambda: bus.consumer(
            [CONTROL], keys={CONTROL: [driver_id]},
            start=Driver.start_offsets(state, control)), wait=common.kafka_wait, stop=stop)
        network = retrying(lambda: bus.consumer([NETWORK], from_beginning=True,
                                                gather=SHOWN_GATHER),
                           wait=common.kafka_wait, stop=stop)
        readings = retrying(lambda: bus.consumer([TELEMETRY], keys={TELEMETRY: []},
                                                 gather=SHOWN_GATHER),
                            wait=common.kafka_wait, stop=stop)

        def mine(msg: Message, delivery: Delivery) -> None:
            if isinstance(msg, (Authorization, Ticket, Telemetry, DriverPairChallenge,
                                DriverPairResult)) and msg.driver_id == driver_id:
                inbox.put(Got(msg, delivery.topic, delivery.partition, delivery.offset))

        def about_the_network(msg: Message, delivery: Delivery) -> None:
            if isinstance(msg, (CentralStatus, CPStatus, Removed, SiteStatus)):
                inbox.put(Got(msg, live=network.is_live(delivery)))

        crew.spawn(consumer.run, mine, stop, name="driver-kafka")
        crew.spawn(network.run, about_the_network, stop, name="driver-network")
        crew.spawn(readings.run, mine, stop, name="driver-readings")
        d = Driver(bus.send, driver_id, inbox, stop, journal=journal, timeout=timeout,
                   charge_seconds=charge_seconds, pause=pause, live=live,
                   caught_up=network.caught_up, credential=credential,
                   watch_cp=lambda cp: readings.retarget(TELEMETRY, [cp]),
                   network=network_id, max_kw=max_kw)
        try:
            if pair_code is not None and not d.pair(pair_code):
                raise SystemExit(1)
            if file_ is not None:
                d.run_file(file_)
            else:
                lines: queue.Queue[str | None] = queue.Queue()
                crew.spawn(read_lines, lines, stop, name="driver-prompt", daemon=True)
                d.run_prompt(lines)
        finally:
            stop.set()
            crew.join(1.5)
        crew.check()
        s = d.summary
        say(f"{driver_id}: done: {s['requested']} requested, {s['authorized']} authorized, "
            f"{s['denied']} denied, {s['unanswered']} unanswered, {s['tickets']} tickets")


def list_available(kafka: Bootstrap, driver_id: str, common: Common) -> None:
    """`--list`: the CPs free to supply now, from network_topic; no request is made."""
    stop = threading.Event()
    install_stop_signals(stop)
    crew = Crew(stop)
    view = NetworkView()
    inbox: queue.Queue[tuple[Message, bool]] = queue.Queue()
    with open_bus(str(kafka), prefix=common.topic_prefix, client_id=f"evc-driver-{driver_id}",
                  wait=common.kafka_wait, stop=stop, note=say, sasl=common.sasl) as bus:
        consumer = retrying(lambda: bus.consumer([NETWORK], from_beginning=True),
                            wait=common.kafka_wait, stop=stop)
        crew.spawn(consumer.run, lambda msg, d: inbox.put((msg, consumer.is_live(d))), stop,
                   name="driver-kafka")
        try:
            read_current(view, inbox, consumer.caught_up, stop)
        finally:
            stop.set()
            crew.join(1.5)
        crew.check()
    for line in available_lines(view):
        click.echo(line)

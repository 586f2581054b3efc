"""`evc web <kafka_host:port>`: the network in a browser (docs/WEB.md).

Another Kafka client, like `evc status`, on any machine: it follows network_topic and
central_changelog (never central's files), so it keeps going through a failover. One
thread owns the model (``own``); Kafka's threads and the HTTP threads hand it records and
questions through its inbox, and it publishes the board's documents at most
``COALESCE`` apart, so a browser gets a few updates a second whatever the network does.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import click

from evc.bus import ChangelogReader, open_bus, ping, retrying
from evc.errors import BusError, ConfigError
from evc.lifecycle import Crew, install_stop_signals
from evc.logs import setup_logging
from evc.net import Address, Bootstrap
from evc.options import KAFKA, AddressType, Common, common_options
from evc.protocol.messages import (
    CentralStatus,
    CPStatus,
    Message,
    OperatorAnswer,
    Removed,
    SiteStatus,
    StandbyStatus,
)
from evc.protocol.topics import CHANGELOG, NETWORK, OPERATOR, Delivery
from evc.web.app import WebApp
from evc.web.hub import Hub, Snapshot
from evc.web.model import WebModel
from evc.web.server import WebServer, serve
from evc.web.state import WebState

log = logging.getLogger(__name__)

COALESCE = 0.25  # s: the board's documents are published at most this often
KAFKA_CHECK = 3.0  # s between checks that this process reaches the broker


@click.command()
@click.argument("kafka", type=KAFKA)
@click.option("--listen", type=AddressType(default_host="127.0.0.1"), default="127.0.0.1:8080",
              show_default=True, metavar="HOST:PORT",
              help="Where to serve the board (0.0.0.0:8080 to serve other machines).")
@click.option("--central-timeout", type=click.FloatRange(1, 60), default=3.0,
              show_default=True, help="Seconds without central's heartbeat that mean it is "
              "unavailable.")
@common_options
def web(kafka: Bootstrap, listen: Address, central_timeout: float, common: Common) -> None:
    """A live web board of the network and its JSON API, from any machine."""
    setup_logging(common.log_level, common.log_file)
    host, port = listen.pair
    stop = threading.Event()
    install_stop_signals(stop)
    inbox: queue.Queue[Any] = queue.Queue()
    hub = Hub(inbox)
    try:
        server = WebServer((host, port), WebApp(hub), stop)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    crew = Crew(stop)
    try:
        with open_bus(str(kafka), prefix=common.topic_prefix, client_id="evc-web",
                      wait=common.kafka_wait, stop=stop, sasl=common.sasl) as bus:
            state = WebState(WebModel(central_timeout), bus.send)
            # the board is published at most every COALESCE: the readers may gather
            consumer = retrying(lambda: bus.consumer([NETWORK], from_beginning=True,
                                                     gather=COALESCE),
                                wait=common.kafka_wait, stop=stop)
            answers = retrying(lambda: bus.consumer([OPERATOR]), wait=common.kafka_wait,
                               stop=stop)

            def got(msg: Message, delivery: Delivery) -> None:
                if isinstance(msg, (CPStatus, CentralStatus, Removed, SiteStatus,
                                    StandbyStatus)):
                    inbox.put(("net", msg, consumer.is_live(delivery)))

            def answered(msg: Message, delivery: Delivery) -> None:
                if isinstance(msg, OperatorAnswer):
                    inbox.put(("answer", msg))

            def check_kafka() -> None:
                """Whether this process reaches the broker: the page says so when not."""
                while not stop.wait(KAFKA_CHECK):
                    inbox.put(("kafka", ping(str(kafka), timeout=2.0, sasl=common.sasl)))

            def answers_ready() -> None:
                while not stop.is_set():
                    if answers.caught_up.wait(0.2):
                        inbox.put(("ready",))
                        return

            def follow_changelog() -> None:
                reader: ChangelogReader | None = None
                try:
                    while not stop.is_set():
                        if reader is None:
                            reader = retrying(lambda: ChangelogReader(
                                bus, CHANGELOG, gather=COALESCE), wait=3600, stop=stop)
                        try:
                            for key, value in reader.poll(0.2):
                                inbox.put(("log", key, value))
                        except BusError as exc:
                            log.warning("changelog: %s; reading on", exc)
                            stop.wait(1.0)
                finally:
                    if reader is not None:
                        reader.close()

            crew.spawn(consumer.run, got, stop, name="web-network")
            crew.spawn(answers.run, answered, stop, name="web-answers")
            crew.spawn(answers_ready, name="web-answers-ready")
            # a daemon: a check in flight when the process stops is not waited for
            crew.spawn(check_kafka, name="web-kafka-check", daemon=True)
            crew.spawn(follow_changelog, name="web-changelog")
            crew.spawn(serve, server, stop, name="web-http")
            click.echo(f"evc web: the board at http://{_shown(host)}:{server.server_port}/ "
                       f"(Kafka {kafka})", err=True)
            try:
                own(state, inbox, hub, stop)
            finally:
                log.info("evc web stopping")
                stop.set()
                hub.close()
                crew.join(1.5)
            crew.check()
    finally:
        server.server_close()
        log.info("evc web stopped")


def _shown(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else host  # noqa: S104 - only shown


def own(state: WebState, inbox: queue.Queue[Any], hub: Hub, stop: threading.Event) -> None:
    """The state's one owner: apply what arrives, answer questions, publish the board."""
    model = state.model
    last = 0.0
    while not stop.is_set():
        try:
            item = inbox.get(timeout=COALESCE)
        except queue.Empty:
            item = None
        while item is not None:
            state.apply(item)
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                item = None
        model.tick()
        now = time.monotonic()
        state.expire(now)
        if model.version != state.published and now - last >= COALESCE:
            dirty, gone = model.take_changes()
            base, state.published, last = state.published, model.version, now
            hub.publish(Snapshot(state.published, base,
                                 model.delta_json(dirty, gone, operator=False),
                                 model.delta_json(dirty, gone, operator=True)))

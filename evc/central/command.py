"""`evc central <socket_port> <kafka_host:port> [db_path]` — EV_Central."""

from __future__ import annotations

import csv
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path

import click

from evc.bus import REQUESTS, TELEMETRY, KafkaBus
from evc.central.board import BoardView
from evc.central.brain import Brain, Settings
from evc.central.events import BusMessage, Event, OperatorKey, OperatorLine
from evc.central.server import MonitorServer
from evc.central.view import PlainView
from evc.errors import ConfigError, EvcError
from evc.runtime import (
    Address,
    KeyReader,
    install_stop_signals,
    join_all,
    parse_address,
    pump_keys,
    setup_logging,
)
from evc.store import Store

log = logging.getLogger("evc.central")


def read_registry(path: Path) -> list[tuple[str, str, float]]:
    """CSV ``id,location,price_eur_kwh`` (a header line is allowed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read charge point file {path}: {exc.strerror}") from None
    rows: list[tuple[str, str, float]] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or row[0].strip().startswith("#"):
            continue
        if lineno == 1 and row[0].strip().lower() in ("id", "cp_id"):
            continue
        if len(row) != 3:
            raise ConfigError(f"{path}:{lineno}: expected id,location,price_eur_kwh")
        cp_id, location, price_text = (c.strip() for c in row)
        try:
            price = float(price_text)
        except ValueError:
            raise ConfigError(f"{path}:{lineno}: price {price_text!r} is not a number") from None
        if not cp_id or " " in cp_id or not 0 <= price <= 100:
            raise ConfigError(f"{path}:{lineno}: bad id or price")
        rows.append((cp_id, location, price))
    return rows


def console_reader(events: queue.Queue[Event], stop: threading.Event) -> None:
    """Operator lines from stdin -> events. EOF (no terminal) just ends the reader."""
    while not stop.is_set():
        line = sys.stdin.readline()
        if not line:
            return
        events.put(OperatorLine(line.strip()))


def want_board(mode: str) -> bool:
    if mode == "board":
        return True
    if mode == "plain":
        return False
    return sys.stdout.isatty() and sys.stdin.isatty() and not os.environ.get("NO_COLOR")


@click.command()
@click.argument("socket_port", type=click.IntRange(0, 65535))
@click.argument("kafka")
@click.argument("db_path", required=False, type=click.Path(dir_okay=False, path_type=Path),
                default=Path("data/central.json"))
@click.option("--listen-host", default="0.0.0.0", show_default=True,
              help="Address the monitor server binds.")
@click.option("--cps", "cps_file", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV id,location,price_eur_kwh: adds or updates registry entries at start.")
@click.option("--heartbeat-timeout", type=click.FloatRange(0.5, 60), default=3.0,
              show_default=True, help="Seconds of monitor silence that mean Desconectado.")
@click.option("--topic-prefix", default="", help="Prefix of the Kafka topic names.")
@click.option("--partitions", type=click.IntRange(1, 64), default=3, show_default=True,
              help="Partitions of topics central creates.")
@click.option("--display", type=click.Choice(["auto", "board", "plain"]), default="auto",
              show_default=True,
              help="board: live coloured board (terminals); plain: one line per change. "
                   "auto picks the board on a terminal unless NO_COLOR is set.")
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Also write the log to this file (with the board: only there; "
                   "default central.log beside the DB).")
def central(socket_port: int, kafka: str, db_path: Path, listen_host: str,
            cps_file: Path | None, heartbeat_timeout: float, topic_prefix: str,
            partitions: int, display: str, log_level: str, log_file: str | None) -> None:
    """EV_Central: the monitor server, the rules, and the operator console.

    Monitors connect to SOCKET_PORT over TCP; drivers and engines reach central
    through the Kafka broker at KAFKA (host:port). DB_PATH is the TinyDB file
    [default: data/central.json]. Type `help` for the operator commands.
    """
    try:
        run_central(socket_port, kafka, db_path, listen_host, cps_file, heartbeat_timeout,
                    topic_prefix, partitions, want_board(display), log_level, log_file)
    except EvcError as exc:
        raise click.ClickException(str(exc)) from None


def run_central(socket_port: int, kafka: str, db_path: Path, listen_host: str,
                cps_file: Path | None, heartbeat_timeout: float, topic_prefix: str,
                partitions: int, board: bool, log_level: str, log_file: str | None) -> None:
    if board:  # the board owns the terminal: the log goes to a file
        setup_logging(log_level, log_file or str(db_path.parent / "central.log"),
                      to_stderr=False)
    else:
        setup_logging(log_level, log_file)
    stop = threading.Event()
    install_stop_signals(stop)
    kafka_addr = parse_address(kafka, what="Kafka address")
    registry = read_registry(cps_file) if cps_file else []
    store = Store(db_path)
    events: queue.Queue[Event] = queue.Queue()
    server = MonitorServer(Address(listen_host, socket_port), events,
                           silence_timeout=heartbeat_timeout)
    threads: list[threading.Thread] = []
    view: PlainView | BoardView | None = None
    keys: KeyReader | None = None
    try:
        bus = KafkaBus(str(kafka_addr), prefix=topic_prefix, client_id="evc-central")
    except EvcError:
        server.stop()
        store.close()
        raise
    try:
        bus.ensure_topics(partitions=partitions)
        if board:
            view = BoardView(f"monitors :{server.address.port}  Kafka {kafka_addr}  DB {db_path}")
        else:
            view = PlainView()
        brain = Brain(store, bus, server, view, Settings(), events=events)
        if isinstance(view, BoardView):
            view.start()
        for cp_id, location, price in registry:
            brain.upsert_cp(cp_id, location, price)
        store.commit()
        consumer = bus.consumer([REQUESTS, TELEMETRY], group_id=f"{topic_prefix}evc-central",
                                from_beginning=True)
        brain.acker = consumer
        threads.append(threading.Thread(
            target=consumer.run, name="central-kafka",
            args=(lambda msg, delivery: events.put(BusMessage(msg, delivery)), stop)))
        if board:
            keys = KeyReader()
            # every key is an event: the board owns the line being typed
            threads.append(threading.Thread(
                target=pump_keys, name="central-keys",
                args=(keys, lambda key: events.put(OperatorKey(key)), stop)))
        else:
            # readline() cannot be interrupted: this one thread is a daemon, owning nothing
            threads.append(threading.Thread(target=console_reader, args=(events, stop),
                                            name="central-console", daemon=True))
        server.start()
        for thread in threads:
            thread.start()
        joined_by = time.monotonic() + 30
        while not consumer.ready.wait(0.2) and not stop.is_set():  # Ctrl+C stays prompt
            if time.monotonic() > joined_by:
                view.note("Kafka consumer group not joined after 30 s; requests wait until "
                          "it is", "warning")
                break
        view.note(f"central ready: monitors on {server.address}, Kafka {kafka_addr}, "
                  f"{len(brain.cps)} charge points in {db_path}")
        brain.run(stop)
    finally:
        stop.set()
        if isinstance(view, BoardView):
            view.stop()
        if keys is not None:
            keys.close()
        server.stop()
        alive = join_all([t for t in threads if not t.daemon], timeout=1.5)
        if alive:
            log.warning("threads still running at exit: %s", ", ".join(alive))
        bus.close(timeout=0.5)
        store.close()

"""`evc central <socket_port> <kafka_host:port> [db_path]` — EV_Central."""

from __future__ import annotations

import csv
import functools
import logging
import math
import os
import queue
import socket
import sys
import threading
from pathlib import Path

import click

from evc.bus import (
    ChangelogReader,
    open_bus,
    retrying,
)
from evc.central.board import BoardView
from evc.central.config import CentralConfig
from evc.central.events import (
    Event,
    OperatorKey,
    OperatorLine,
)
from evc.central.failover import ActiveTerm, Standby, join_the_lease, wait_for_lease
from evc.central.model import Settings
from evc.central.server import MonitorServer
from evc.central.view import PlainView
from evc.console import KeyReader, pump_keys, say
from evc.errors import ConfigError, EvcError
from evc.lifecycle import Crew, install_stop_signals
from evc.logs import setup_logging
from evc.net import Address, Bootstrap
from evc.options import KAFKA, Common, common_options
from evc.protocol.codes import DEFAULT_SPEED
from evc.protocol.ids import check_id, check_text
from evc.protocol.topics import CHANGELOG
from evc.store import AuditLog, Store
from evc.store.credentials import CredentialFiles, default_dir

log = logging.getLogger("evc.central")



def read_registry(path: Path) -> list[tuple[str, str, float, str | None]]:
    """CSV ``id,location,price_eur_kwh[,site]`` (a header line is allowed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read charge point file {path}: {exc.strerror}") from None
    rows: list[tuple[str, str, float, str | None]] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or row[0].strip().startswith("#"):
            continue
        if lineno == 1 and row[0].strip().lower() in ("id", "cp_id"):
            continue
        if len(row) not in (3, 4):
            raise ConfigError(f"{path}:{lineno}: expected id,location,price_eur_kwh[,site]")
        cp_id, location, price_text = (c.strip() for c in row[:3])
        site = row[3].strip() if len(row) == 4 else None
        try:
            price = float(price_text)
        except ValueError:
            raise ConfigError(f"{path}:{lineno}: price {price_text!r} is not a number") from None
        try:
            check_id(cp_id, "charge point id")
            check_text(location, "location", 120)
            if site:
                check_id(site, "site id")
        except EvcError as exc:
            raise ConfigError(f"{path}:{lineno}: {exc}") from None
        if not math.isfinite(price) or not 0 <= price <= 100:
            raise ConfigError(f"{path}:{lineno}: price {price_text!r} must be 0-100 €/kWh")
        rows.append((cp_id, location, price, site))
    return rows


def read_sites(path: Path) -> list[tuple[str, float | None]]:
    """CSV ``id,max_kw`` (a header line is allowed; ``none`` or empty: no limit)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read sites file {path}: {exc.strerror}") from None
    rows: list[tuple[str, float | None]] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or row[0].strip().startswith("#"):
            continue
        if lineno == 1 and row[0].strip().lower() in ("id", "site"):
            continue
        if len(row) != 2:
            raise ConfigError(f"{path}:{lineno}: expected id,max_kw")
        site, limit_text = (c.strip() for c in row)
        try:
            check_id(site, "site id")
        except EvcError as exc:
            raise ConfigError(f"{path}:{lineno}: {exc}") from None
        if limit_text.lower() in ("", "none"):
            rows.append((site, None))
            continue
        try:
            limit = float(limit_text)
        except ValueError:
            raise ConfigError(f"{path}:{lineno}: max_kw {limit_text!r} is not a number") \
                from None
        if not math.isfinite(limit) or not 0 <= limit <= 100_000:
            raise ConfigError(f"{path}:{lineno}: max_kw {limit_text!r} must be 0-100000 kW")
        rows.append((site, limit))
    return rows


def read_drivers(path: Path) -> list[str]:
    """Driver ids, one per line (a header `id`, blank lines and # comments allowed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read driver file {path}: {exc.strerror}") from None
    ids = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(",", 1)[0].strip()
        if not line or (lineno == 1 and line.lower() in ("id", "driver_id")):
            continue
        try:
            ids.append(check_id(line, "driver id"))
        except EvcError as exc:
            raise ConfigError(f"{path}:{lineno}: {exc}") from None
    return ids


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
@click.argument("kafka", type=KAFKA)
@click.argument("db_path", required=False, type=click.Path(dir_okay=False, path_type=Path),
                default=Path("data/central.json"))
@click.option("--listen-host", default="0.0.0.0", show_default=True,
              help="Address the monitor server binds.")
@click.option("--cps", "cps_file", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV id,location,price_eur_kwh: adds or updates registry entries at start.")
@click.option("--drivers", "drivers_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Drivers to register at start: one id per line (# comments). At the "
                   "auth level each gets its credential in the credentials folder.")
@click.option("--sites", "sites_file", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV id,max_kw: each site's power limit, shared among its supplies (a "
                   "CP's site is the 4th column of --cps, or `site <site> add <cp>`).")
@click.option("--min-kw", type=click.FloatRange(0.1, 1000), default=4.2, show_default=True,
              help="A supply whose share of its site's limit would be smaller waits.")
@click.option("--speed", type=click.FloatRange(0.01, 100000), default=DEFAULT_SPEED,
              show_default=True, help="The simulation clock the engines run (their "
                   "--speed): readings are judged plausible against it.")
@click.option("--pair", "pair", is_flag=True, help="Print a one-time pairing code for each "
              "CP of --cps and driver of --drivers (typed once on its machine: --pair CODE).")
@click.option("--security", type=click.Choice(["auth", "open"]), default="auth",
              show_default=True, help="auth: every CP and driver proves its credential; "
              "open: central also serves clients that prove nothing (written to the seed "
              "alone), while those that hold a credential still prove it and are signed. "
              "See docs/SECURITY.md.")
@click.option("--credentials-dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where central writes the credentials it makes (<id>.key, "
              "0600) [default: $EVC_CREDENTIALS_DIR, or 'credentials' beside the DB].")
@click.option("--heartbeat-timeout", type=click.FloatRange(0.5, 60), default=3.0,
              show_default=True, help="Seconds of monitor silence that mean Desconectado.")
@click.option("--register-timeout", type=click.FloatRange(0.5, 60), default=5.0,
              show_default=True, help="Seconds a new connection has to register.")
@click.option("--partitions", type=click.IntRange(1, 64), default=3, show_default=True,
              help="Partitions of topics central creates.")
@click.option("--final-timeout", type=click.FloatRange(0.5, 3600), default=20.0,
              show_default=True, help="Seconds an ended supply waits for the engine's final "
              "figures (a dead engine that restarts reports them) before billing the last seen.")
@click.option("--resume-grace", type=click.FloatRange(0.5, 3600), default=15.0,
              show_default=True, help="After a restart, seconds the monitors of running "
              "supplies have to register again before those supplies end.")
@click.option("--max-supply-seconds", type=click.FloatRange(0, 10**6), default=3600,
              show_default=True, help="End any supply that lasts longer (a driver that never "
              "came back); 0: never.")
@click.option("--display", type=click.Choice(["auto", "board", "plain"]), default="auto",
              show_default=True,
              help="board: live coloured board (terminals); plain: one line per change. "
                   "auto picks the board on a terminal unless NO_COLOR is set.")
@click.option("--web-url", default="", help="Where this network's web board is (evc web): "
              "shown in the board's title.")
@common_options
def central(socket_port: int, kafka: Bootstrap, db_path: Path, listen_host: str,
            cps_file: Path | None, drivers_file: Path | None, sites_file: Path | None,
            min_kw: float, speed: float, pair: bool, security: str,
            credentials_dir: Path | None, heartbeat_timeout: float, register_timeout: float,
            partitions: int, final_timeout: float, resume_grace: float,
            max_supply_seconds: float, display: str, web_url: str, common: Common) -> None:
    """EV_Central: the monitor server, the rules, and the operator console.

    Monitors connect to SOCKET_PORT over TCP; drivers and engines reach central
    through the Kafka broker at KAFKA (host:port, or several: host:port,host:port).
    DB_PATH is the TinyDB file
    [default: data/central.json]. Type `help` for the operator commands.
    With the board, the log goes to --log-file (default central.log beside the DB).
    Another central on the same broker and --topic-prefix (its own DB) is a standby:
    it follows this one's state and takes over within seconds if this one dies.
    """
    run_central(CentralConfig(
        socket_port=socket_port, kafka=kafka, db_path=db_path, listen_host=listen_host,
        cps_file=cps_file, drivers_file=drivers_file, pair=pair, sites_file=sites_file,
        credentials_dir=credentials_dir,
        heartbeat_timeout=heartbeat_timeout, register_timeout=register_timeout,
        partitions=partitions, board=want_board(display), common=common, web_url=web_url,
        settings=Settings(final_timeout=final_timeout, resume_grace=resume_grace,
                          max_supply=max_supply_seconds, secure=security == "auth",
                          min_kw=min_kw, speed=speed)))


def run_central(cfg: CentralConfig) -> None:
    common = cfg.common
    if cfg.board:  # the board owns the terminal: the log goes to a file
        setup_logging(common.log_level,
                      common.log_file or str(cfg.db_path.parent / "central.log"),
                      to_stderr=False)
    else:
        setup_logging(common.log_level, common.log_file)
    stop = threading.Event()
    install_stop_signals(stop)
    registry = read_registry(cfg.cps_file) if cfg.cps_file else []
    sites = read_sites(cfg.sites_file) if cfg.sites_file else []
    drivers = read_drivers(cfg.drivers_file) if cfg.drivers_file else []
    credentials = CredentialFiles(cfg.credentials_dir or (
        default_dir() if os.environ.get("EVC_CREDENTIALS_DIR")
        else cfg.db_path.parent / "credentials"))
    store = Store(cfg.db_path, lock=True)
    audit = AuditLog(cfg.db_path.with_name(cfg.db_path.stem + ".audit.jsonl"))
    events: queue.Queue[Event] = queue.Queue(maxsize=100_000)
    server = MonitorServer(Address(cfg.listen_host, cfg.socket_port), events,
                           silence_timeout=cfg.heartbeat_timeout,
                           register_timeout=cfg.register_timeout)
    crew = Crew(stop)
    view: PlainView | BoardView | None = None
    keys: KeyReader | None = None
    reader: ChangelogReader | None = None
    standby: Standby | None = None
    try:
        bus = open_bus(str(cfg.kafka), prefix=common.topic_prefix, client_id="evc-central",
                       wait=common.kafka_wait, partitions=cfg.partitions, stop=stop,
                       note=lambda text: log.warning("%s", text) if cfg.board else say(text),
                       sasl=common.sasl)
    except EvcError:
        server.stop()
        store.close()
        audit.close()
        raise
    try:
        identity = f"{socket.gethostname()}:{server.address.port} pid {os.getpid()}"
        if cfg.board:
            view = BoardView(f"monitors :{server.address.port}  Kafka {cfg.kafka}  "
                             f"DB {cfg.db_path}" + (f"  web {cfg.web_url}" if cfg.web_url else ""))
        else:
            view = PlainView()
        # The network's state is the changelog's when it has any (this DB may be behind
        # it: another central was active meanwhile); an empty one gets this DB's.
        reader = retrying(lambda: ChangelogReader(bus, CHANGELOG), wait=common.kafka_wait,
                          stop=stop)
        found = store.apply_changes(reader.read_to_end(stop), replace=True)
        store.commit()
        lease = join_the_lease(bus, cfg, crew, stop)
        if cfg.board:
            keys = KeyReader()
            # every key is an event: the board owns the line being typed
            crew.spawn(pump_keys, keys, lambda key: events.put(OperatorKey(key)), stop,
                       name="central-keys", start=False)
        else:
            # readline() cannot be interrupted: this one thread is a daemon, owning nothing
            crew.spawn(console_reader, events, stop, name="central-console", daemon=True,
                       start=False)
        crew.spawn(server.run, name="central-tcp", start=False)
        crew.start()
        if isinstance(view, BoardView):
            view.start()
        standby = Standby(bus, store, reader, server, events, view, identity)
        first = True
        while not stop.is_set():
            took_over = not first or not wait_for_lease(lease, stop)
            if took_over:
                standby.follow(lease, stop)
                if stop.is_set():
                    break
            first = False
            term = ActiveTerm(cfg, bus, store, reader, server, events, view, identity,
                              credentials, audit, stop)
            term.run(lease, publish_all=found == 0, registry=registry, drivers=drivers,
                     sites=sites,
                     took_over=took_over)
            found = 1
            if term.stepped_down and not stop.is_set():
                view.note("stepped down: another central took over; this one is the standby "
                          "now", "error")
                # What this term stored after it was fenced was never committed: the
                # network's state is the changelog's, read again from its beginning.
                reader.close()
                reader = standby.reader = retrying(
                    lambda: ChangelogReader(bus, CHANGELOG), wait=3600, stop=stop)
                store.apply_changes(retrying(functools.partial(reader.read_to_end, stop),
                                             wait=3600, stop=stop), replace=True)
                store.commit()
    finally:
        stop.set()
        if isinstance(view, BoardView):
            view.stop()
        if keys is not None:
            keys.close()
        server.stop()
        if standby is not None:
            standby.close()
        if reader is not None:
            reader.close()
        crew.join(1.5)
        bus.close(timeout=0.5)
        store.close()
        audit.close()
    crew.check()



"""`evc cp-engine <kafka_host:port> --listen [HOST:]PORT` — EV_CP_E."""

from __future__ import annotations

import logging
import queue
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import click

from evc.bus import open_bus, retrying
from evc.console import KeyReader, pump_keys, say, stamp
from evc.cp_engine.engine import Engine
from evc.errors import BusError, ConfigError, EvcError, ProtocolError
from evc.lifecycle import Crew, install_stop_signals, join_all
from evc.logs import log_through, setup_logging
from evc.net import Address, Bootstrap
from evc.netview import CentralWatch, NetworkView
from evc.options import ID, KAFKA, AddressType, Common, common_options, credentials_option
from evc.ports import assert_never
from evc.protocol.codes import DEFAULT_SPEED
from evc.protocol.framing import read_frames, send_frame
from evc.protocol.messages import (
    CentralStatus,
    EngineKey,
    EngineOpen,
    Health,
    HealthCheck,
    HealthReply,
    Message,
    from_wire,
)
from evc.protocol.topics import CENTRAL_KEY, CONTROL, NETWORK
from evc.store import JsonFile
from evc.store.credentials import Credential

log = logging.getLogger("evc.cp_engine")
MAX_MONITORS = 8


@dataclass(frozen=True)
class Check:
    sock: socket.socket
    message: HealthCheck | EngineKey | EngineOpen


@dataclass(frozen=True)
class Order:
    message: Message
    topic: str


@dataclass(frozen=True)
class Key:
    text: str


@dataclass(frozen=True)
class FinalDone:
    """Kafka's verdict on a final telemetry message."""

    session_id: str
    error: BusError | None  # None: Kafka took it


EngineEvent = Check | Order | Key | FinalDone
"""What the engine's I/O threads hand to its main thread."""


class Screen:
    """A status line redrawn in place on a terminal; plain lines on a pipe."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self._last = ""
        self._lock = threading.Lock()  # the log's lines come from any thread
        if self.tty:
            log_through(self.above)

    def line(self, text: str) -> None:
        self.above(f"{stamp()} {text}")

    def above(self, out: str) -> None:
        """A line printed above the status line (which is drawn again under it)."""
        with self._lock:
            try:
                if self.tty:
                    sys.stdout.write("\r\x1b[2K" + out + "\n")
                    if self._last:
                        sys.stdout.write(self._last)
                else:
                    sys.stdout.write(out + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                pass

    def status(self, text: str) -> None:
        with self._lock:
            if text == self._last:
                return
            self._last = text
            if self.tty:
                try:
                    sys.stdout.write("\r\x1b[2K" + text)
                    sys.stdout.flush()
                except (OSError, ValueError):
                    pass

    def close(self) -> None:
        if self.tty and self._last:
            sys.stdout.write("\n")
            sys.stdout.flush()


def serve_health(listener: socket.socket, events: queue.Queue[EngineEvent],
                 stop: threading.Event, workers: list[threading.Thread]) -> None:
    """Accept monitors; each connection gets a reader that turns frames into events."""
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            sock, addr = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        workers[:] = [w for w in workers if w.is_alive()]
        if len(workers) >= MAX_MONITORS:
            log.warning("refusing %s: %d monitors connected already", addr, len(workers))
            sock.close()
            continue
        worker = threading.Thread(target=read_checks, args=(sock, events, stop),
                                  name=f"engine-health-{addr[1]}")
        workers.append(worker)
        worker.start()
    listener.close()


IDLE = 10.0  # a monitor checks every second: a connection silent this long is let go


def read_checks(sock: socket.socket, events: queue.Queue[EngineEvent],
                stop: threading.Event) -> None:
    try:
        for obj in read_frames(sock, stop, idle=IDLE):
            message = from_wire(obj)
            if not isinstance(message, (HealthCheck, EngineKey, EngineOpen)):
                raise ProtocolError(f"a monitor may not send {message.TYPE!r}")
            events.put(Check(sock, message))
    except ProtocolError as exc:
        log.warning("bad frame from monitor: %s", exc)
    except OSError:  # closed, broken, or idle (TimeoutError)
        pass
    finally:
        sock.close()


def hang_up(sock: socket.socket) -> None:
    """End a connection from the owner thread; its reader sees the end and closes it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def answer_check(engine: Engine, event: Check) -> None:
    """A frame from a monitor: the key hand-off, or a health check to answer (or refuse)."""
    msg = event.message
    match msg:
        case EngineKey():
            if not engine.on_engine_key(msg):
                why = (f"a key hand-off for {msg.cp_id} that does not fit the credential "
                       "here (is the engine's credential the monitor's?)")
                engine.refuse(why)
                refuse_and_hang_up(engine, event.sock, msg.cp_id, why)
        case EngineOpen():
            if not engine.on_engine_open(msg):
                refuse_and_hang_up(engine, event.sock, msg.cp_id, "a word that this CP is "
                                   "unproven: it was proven, so only signed orders count")
        case HealthCheck():
            answer_health(engine, event.sock, msg)
        case _:
            assert_never(msg)


def refuse_and_hang_up(engine: Engine, sock: socket.socket, cp_id: str, why: str) -> None:
    """A KO that says why, then the connection closed: the monitor reports it (AVERÍA with
    this reason on central's board); nothing of the engine's is told."""
    try:
        sock.settimeout(1.0)
        send_frame(sock, HealthReply(cp_id=engine.cp_id or cp_id, status=Health.KO,
                                     state=f"refused {why}"[:200]).to_wire())
    except OSError:
        pass
    hang_up(sock)


def answer_health(engine: Engine, sock: socket.socket, msg: HealthCheck) -> None:
    why = engine.refuse_check(msg)
    if why is not None:
        log.warning("refused %s: closing that connection", why)
        refuse_and_hang_up(engine, sock, msg.cp_id, why)
        return
    reply = engine.on_health_check(msg)
    if reply is not None:
        try:
            sock.settimeout(1.0)
            send_frame(sock, reply.to_wire())
        except OSError:
            pass  # the monitor went away; its reader ends


@dataclass(frozen=True)
class EngineConfig:
    kafka: Bootstrap
    listen: Address
    cp_id: str | None = None
    max_kw: float = 22.0
    speed: float = DEFAULT_SPEED
    max_supply_seconds: float = 0.0
    state_dir: Path = Path("data")
    credentials: Path | None = None
    common: Common = Common()


@click.command("cp-engine")
@click.argument("kafka", type=KAFKA)
@click.option("--listen", "listen", required=True, type=AddressType(default_host="127.0.0.1"),
              help="[HOST:]PORT where the monitor's health checks arrive (host default "
                   "127.0.0.1: only this machine's monitor).")
@click.option("--id", "cp_id", default=None, type=ID,
              help="Pin the CP id (else learnt from the monitor).")
@click.option("--max-kw", type=click.FloatRange(0.1, 1000), default=22.0, show_default=True,
              help="The most this CP supplies, in kW (central may give it less: its share "
                   "of its site's limit).")
@click.option("--speed", type=click.FloatRange(0.01, 100000), default=DEFAULT_SPEED,
              show_default=True, help="Simulated seconds per real second: a reading each "
                   "real second adds kW x speed / 3600 kWh (22 kW: 0.5 kWh).")
@click.option("--max-supply-seconds", type=click.FloatRange(0, 86400), default=0,
              help="End a supply after this many seconds (0: no limit).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("data"), show_default=True,
              help="Folder of the engine's journal (engine-<port>.json): a restarted engine "
                   "on the same port reports the supply it was running.")
@credentials_option("Its CP's", "<cp_id>")
@common_options
def cp_engine(kafka: Bootstrap, listen: Address, cp_id: str | None, max_kw: float,
              speed: float,
              max_supply_seconds: float, state_dir: Path, credentials: Path | None,
              common: Common) -> None:
    """EV_CP_E: supplies energy on central's orders, answers its monitor's health checks.

    Keys (without Enter on a terminal, one per line on a pipe):
    f fault (answer KO), h hang (stop answering), r recover, u unplug the vehicle.
    """
    run_engine(EngineConfig(kafka=kafka, listen=listen, cp_id=cp_id, max_kw=max_kw,
                            speed=speed,
                            max_supply_seconds=max_supply_seconds, state_dir=state_dir,
                            credentials=credentials, common=common))


def run_engine(cfg: EngineConfig) -> None:
    setup_logging(cfg.common.log_level, cfg.common.log_file)
    stop = threading.Event()
    install_stop_signals(stop)
    journal = JsonFile(cfg.state_dir / f"engine-{cfg.listen.port}.json")
    journal.load()  # a broken journal is a clear error before anything starts
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(cfg.listen.pair)
        listener.listen(8)
    except OSError as exc:
        listener.close()
        raise ConfigError(f"cannot listen on {cfg.listen}: {exc.strerror or exc}") from None
    try:
        bus = open_bus(str(cfg.kafka), prefix=cfg.common.topic_prefix, client_id="evc-engine",
                       wait=cfg.common.kafka_wait, stop=stop, note=say, sasl=cfg.common.sasl)
    except EvcError:
        listener.close()
        raise
    screen = Screen()
    events: queue.Queue[EngineEvent] = queue.Queue()
    credentials: dict[str, Credential] = {}

    def secret_for(cp: str) -> str | None:
        if cp not in credentials:
            credentials[cp] = Credential(cp, cfg.credentials)
        try:
            return credentials[cp].get()
        except EvcError as exc:  # a broken file: said once in the log, treated as none
            log.error("%s", exc)
            return None

    engine = Engine(bus.send, screen.line, journal=journal,
                    notify=lambda sid, error: events.put(FinalDone(sid, error)),
                    cp_id=cfg.cp_id, max_kw=cfg.max_kw, speed=cfg.speed,
                    max_seconds=cfg.max_supply_seconds,
                    secret_for=secret_for)
    keys = KeyReader()
    workers: list[threading.Thread] = []
    crew = Crew(stop)
    try:
        engine.recover()
        # Only the partitions that hold this CP's orders and central's heartbeat: an
        # engine's Kafka cost does not grow with the network. Until its monitor says which
        # CP it serves (no --id), it reads no orders (none can be for it).
        consumer = retrying(lambda: bus.consumer(
            [CONTROL, NETWORK], keys={CONTROL: [cfg.cp_id] if cfg.cp_id else [],
                                      NETWORK: [CENTRAL_KEY]}),
            wait=cfg.common.kafka_wait, stop=stop)
        crew.spawn(serve_health, listener, events, stop, workers, name="engine-accept")
        crew.spawn(consumer.run, lambda msg, d: events.put(Order(msg, d.topic)), stop,
                   name="engine-kafka")
        crew.spawn(pump_keys, keys, lambda key: events.put(Key(key)), stop, name="engine-keys")
        screen.line(f"engine listening for its monitor on {cfg.listen}, Kafka {cfg.kafka}"
                    + (f", pinned to {cfg.cp_id}" if cfg.cp_id else ""))
        wait = 1.0
        control_topic = bus.topic(CONTROL)
        network = NetworkView()
        reading_orders_of = cfg.cp_id
        watch = CentralWatch(network, screen.line,
                             lost=lambda since: f"central unavailable since {stamp(since)} "
                                                "(a running supply goes on)",
                             back=lambda _away: "central is back")
        while not stop.is_set():
            watch.check()
            screen.status(engine.status_line()
                          + (f" | central unavailable since {stamp(watch.since)}"
                             if watch.since is not None else ""))
            try:
                event = events.get(timeout=min(wait, 0.2))
            except queue.Empty:
                event = None
            match event:
                case None:
                    pass
                case Check():
                    answer_check(engine, event)
                case Order():
                    if isinstance(event.message, CentralStatus):
                        network.apply(event.message)
                    elif event.topic == control_topic:  # not the CPs' states (network_topic)
                        engine.on_order(event.message)
                case Key():
                    engine.on_key(event.text)
                case FinalDone():
                    engine.final_done(event.session_id, event.error)
                case _:
                    assert_never(event)
            if engine.cp_id != reading_orders_of and engine.cp_id is not None:
                reading_orders_of = engine.cp_id  # learnt from its monitor: its orders now
                consumer.retarget(CONTROL, [engine.cp_id])
            wait = engine.tick()
    finally:
        stop.set()
        engine.shutdown()
        keys.close()
        screen.close()
        crew.join(1.5)
        join_all(workers, timeout=0.5)
        bus.close(timeout=0.5)  # flushes: the last final is confirmed now, or kept for later
        while not events.empty():
            event = events.get_nowait()
            if isinstance(event, FinalDone):
                engine.final_done(event.session_id, event.error)
    crew.check()

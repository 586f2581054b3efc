"""A small charging network of real `evc` processes, for flow tests."""

from __future__ import annotations

import threading
from pathlib import Path

from evc.bus import KafkaBus
from evc.protocol.messages import Message
from evc.protocol.topics import CONTROL, REQUESTS, TELEMETRY
from evc.store import read_database
from tests.helpers import Proc, free_port, wait_for

CPS = [("CP-01", "C/Italia 5", 0.35), ("CP-02", "Av. Maisonnave 12", 0.40),
       ("CP-03", "C/Gerona 15", 0.30)]
DRIVERS = [f"D-{i}" for i in range(1, 10)] + ["D-23", "D-42", "D-77"]


def signed(message, credentials: Path | None = None):
    """``message`` signed with its driver's credential, as that driver would send it."""
    import os

    from evc.protocol import auth

    folder = credentials or Path(os.environ["EVC_CREDENTIALS_DIR"])
    secret = (folder / f"{message.driver_id}.key").read_text().strip()
    return auth.sign(message, auth.driver_key(secret))


class Observer:
    """Reads every topic of a prefix from the beginning, like a test harness would."""

    def __init__(self, bus: KafkaBus, context=None) -> None:
        self.context = context or (lambda: "")
        self.consumer = bus.consumer([REQUESTS, TELEMETRY, CONTROL], from_beginning=True)
        self.messages: list[tuple[str, Message]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.consumer.run, args=(self._add, self._stop))
        self._thread.start()

    def _add(self, msg: Message, delivery) -> None:
        topic = delivery.topic.split("-", 1)[-1] if "-" in delivery.topic else delivery.topic
        with self._lock:
            self.messages.append((topic, msg))

    def of(self, kind: type, **match) -> list:
        with self._lock:
            return [m for _, m in self.messages if isinstance(m, kind)
                    and all(getattr(m, k) == v for k, v in match.items())]

    def wait(self, kind: type, count: int = 1, timeout: float = 15.0, **match) -> list:
        return wait_for(lambda: len(self.of(kind, **match)) >= count and self.of(kind, **match),
                        timeout, f"{count} x {kind.__name__} {match}\n{self.context()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Network:
    def __init__(self, kafka: str, prefix: str, tmp: Path, procs: list[Proc]) -> None:
        self.kafka = kafka
        self.prefix = prefix
        self.tmp = tmp
        self.procs = procs
        self.port = free_port()
        self.db = tmp / "central.json"
        self.central_log = tmp / "central.log"
        self.cps_file = tmp / "cps.csv"
        self.cps_file.write_text("id,location,price_eur_kwh\n" + "".join(
            f"{i},{loc},{p}\n" for i, loc, p in CPS))
        self.drivers_file = tmp / "drivers.txt"
        self.drivers_file.write_text("".join(f"{d}\n" for d in DRIVERS))
        self.central: Proc | None = None
        self.engines: dict[str, Proc] = {}
        self.monitors: dict[str, Proc] = {}
        self.engine_ports: dict[str, int] = {}

    def start_central(self, *extra: str) -> Proc:
        self.central = Proc(["central", str(self.port), self.kafka, str(self.db),
                             "--listen-host", "127.0.0.1", "--cps", str(self.cps_file),
                             "--drivers", str(self.drivers_file),
                             "--topic-prefix", self.prefix, "--log-level", "INFO",
                             "--log-file", str(self.central_log), *extra], name="central")
        self.procs.append(self.central)
        try:
            self.central.wait_line("central ready", timeout=40)
        except AssertionError as exc:  # its log says more than its screen
            log = self.central_log.read_text(errors="replace") \
                if self.central_log.exists() else "(no log)"
            raise AssertionError(f"{exc}\n--- {self.central_log}:\n{log[-6000:]}") from None
        return self.central

    def start_engine(self, cp_id: str, *extra: str) -> Proc:
        port = self.engine_ports.setdefault(cp_id, free_port())
        engine = Proc(["cp-engine", self.kafka, "--listen", f"127.0.0.1:{port}",
                       "--topic-prefix", self.prefix, "--log-level", "INFO",
                       "--state-dir", str(self.tmp / "state"), *extra],
                      name=f"engine {cp_id}")
        self.procs.append(engine)
        engine.wait_line("engine listening", timeout=30)
        self.engines[cp_id] = engine
        return engine

    def start_monitor(self, cp_id: str, *extra: str, expect_registered: bool = True) -> Proc:
        port = self.engine_ports.get(cp_id) or free_port()
        monitor = Proc(["cp-monitor", f"127.0.0.1:{port}", f"127.0.0.1:{self.port}", cp_id,
                        *extra], name=f"monitor {cp_id}")
        self.procs.append(monitor)
        if expect_registered:
            monitor.wait_line("registered with central", timeout=15)
        self.monitors[cp_id] = monitor
        return monitor

    def start_cp(self, cp_id: str) -> None:
        self.start_engine(cp_id)
        self.start_monitor(cp_id)
        self.wait_state(cp_id, "Activado")

    def start_driver(self, driver_id: str, lines: list[str], *extra: str) -> Proc:
        """A driver whose file holds ``lines`` (a file already there is kept: a driver
        restarted with the same file goes on where it was)."""
        path = self.tmp / f"{driver_id}.txt"
        if not path.exists():
            path.write_text("".join(f"{x}\n" for x in lines))
        proc = Proc(["driver", self.kafka, driver_id, "--file", str(path),
                     "--topic-prefix", self.prefix, *extra], name=f"driver {driver_id}")
        self.procs.append(proc)
        return proc

    def start_gateway(self, *extra: str, centrals: str = "") -> Proc:
        """`evc ocpp` for this network (the same port again when restarted)."""
        if not getattr(self, "gateway_port", 0):
            self.gateway_port = free_port()
        gateway = Proc(["ocpp", self.kafka, centrals or f"127.0.0.1:{self.port}", "--listen",
                        f"127.0.0.1:{self.gateway_port}", "--state-dir",
                        str(self.tmp / "gateway"), "--topic-prefix", self.prefix,
                        "--log-level", "INFO", *extra], name="gateway")
        self.procs.append(gateway)
        gateway.wait_line("OCPP 1.6J gateway on", timeout=30)
        self.gateway = gateway
        return gateway

    def ocpp_password(self, cp_id: str) -> str:
        import os

        from evc.protocol import auth
        secret = (Path(os.environ["EVC_CREDENTIALS_DIR"]) / f"{cp_id}.key").read_text().strip()
        return auth.ocpp_password(secret, cp_id)

    def start_charger(self, cp_id: str, *extra: str, password: str | None = "",
                      booted: bool = True) -> Proc:
        """A simulated OCPP charger (the ocpp package's ChargePoint) at the gateway; its
        password is the right one unless said (None: none)."""
        pw = self.ocpp_password(cp_id) if password == "" else password
        charger = Proc(["ocpp-charger", f"ws://127.0.0.1:{self.gateway_port}/{cp_id}",
                        "--state", str(self.tmp / f"{cp_id}-charger.json"),
                        *(["--password", pw] if pw is not None else []), *extra],
                       name=f"charger {cp_id}")
        self.procs.append(charger)
        if booted:
            charger.wait_line("booted", timeout=20)
        return charger

    def state_lines(self, cp_id: str) -> list[str]:
        assert self.central is not None
        return [ln for ln in self.central.lines if f" {cp_id} " in f" {ln} " and " -> " in ln]

    def current_state(self, cp_id: str) -> str | None:
        lines = self.state_lines(cp_id)
        if not lines:
            return None
        return lines[-1].split(" -> ", 1)[1].split()[0]

    def wait_state(self, cp_id: str, state: str, timeout: float = 10.0) -> None:
        wait_for(lambda: self.current_state(cp_id) == state, timeout,
                 f"{cp_id} to be {state} on central (now {self.current_state(cp_id)}):\n"
                 + (self.central.output[-3000:] if self.central else ""))

    def context(self) -> str:
        """What central printed and logged last: for failure messages."""
        out = self.central.output[-2500:] if self.central else "(no central)"
        try:
            log = self.central_log.read_text()[-4000:]
        except OSError:
            log = "(no log)"
        return f"central output:\n{out}\ncentral log:\n{log}"

    def db_json(self) -> dict:
        """What central has committed: its TinyDB file with the journal replayed."""
        return read_database(self.db)

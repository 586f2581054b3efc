"""Central under load, at the authenticated level: latency as drivers see it, CPU, memory.

    python -m benchmarks.scale [--cps 1000] [--supplies 500] [--seconds 30]
                               [--real-cps 50] [--real-drivers 20] [--kafka HOST:PORT]
    python -m benchmarks.scale --ramp            # 500, 1000, 2000, 5000 CPs, half supplying
    python -m benchmarks.scale --seconds 600     # memory: RSS at minute 1 and at the end
    ... --json                                   # one JSON object with the figures, last

Runs a real `evc central` against the real broker, and the network around it: most CPs
are light-weight stand-ins in this process speaking the real protocols (a monitor per CP
on one selector: challenge-response registration, a heartbeat every second; an engine per
CP: signed telemetry every second while supplying), plus --real-cps real `evc cp-engine`
+ `evc cp-monitor` pairs and --real-drivers real `evc driver` processes (charging at the
real CPs in a loop), so the figures include the real components' own latency. Simulated
drivers sign their requests; their latencies are measured where a driver sees them (its
answer or ticket read from control_topic). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import queue
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.procinfo import children, cpu_seconds, rss_mb
from evc.bus import KafkaBus
from evc.errors import BusError
from evc.net import free_port
from evc.protocol import auth
from evc.protocol import messages as m
from evc.protocol.framing import FrameDecoder, encode_frame
from evc.protocol.topics import CENTRAL_KEY, CONTROL, NETWORK, REQUESTS, TELEMETRY

EVC = [sys.executable, "-m", "evc.cli"]
RAMP = (500, 1000, 2000, 5000)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def summary(values_s: list[float]) -> dict[str, float | int]:
    ms = [v * 1000 for v in values_s if v == v]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(pct(ms, 0.99), 1), "max_ms": round(max(ms), 1)}


def show(label: str, s: dict[str, Any]) -> None:
    if not s.get("n"):
        print(f"  {label:40s} no samples")
        return
    print(f"  {label:40s} n={s['n']:5d}  p50 {s['p50_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms"
          f"  max {s['max_ms']:7.1f} ms")


def secret(folder: Path, ident: str, timeout: float = 30) -> str:
    path = folder / f"{ident}.key"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no credential {path}")
        time.sleep(0.05)
    return path.read_text().strip()


class Monitors:
    """Monitor stand-ins on one selector: register with the challenge-response, then a
    heartbeat every second. The Kafka key of each registration goes to ``keys``. They
    stand for monitors on thousands of other machines, so they spend as little of this
    one as they can: each CP's heartbeat frame is encoded once and sent again, and
    central's acks are read but not decoded (central's work per beat is the same)."""

    def __init__(self, port: int, cp_ids: list[str], creds: Path) -> None:
        self.port, self.creds = port, creds
        self.sel = selectors.DefaultSelector()
        self.socks: dict[str, socket.socket] = {}
        self.decoders: dict[str, FrameDecoder] = {}
        self.nonces: dict[str, str] = {}
        self.keys: dict[str, str] = {}
        self.registered: set[str] = set()
        self.beats: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.pending: list[tuple[float, str]] = [(0.0, cp) for cp in cp_ids]  # (when, cp)
        self.lost = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _connect(self, cp: str) -> None:
        """A non-blocking connect: one slow accept must not hold every heartbeat back."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))
        self.socks[cp] = sock
        self.decoders[cp] = FrameDecoder()
        self.sel.register(sock, selectors.EVENT_WRITE, cp)

    def _connected(self, cp: str) -> None:
        sock = self.socks[cp]
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.close(cp)
            return
        self.sel.modify(sock, selectors.EVENT_READ, cp)
        self.nonces[cp] = auth.new_nonce()
        self.send(cp, m.Register(cp_id=cp, location="bench", nonce=self.nonces[cp]))

    def _loop(self) -> None:
        next_beat = time.monotonic() + 1
        while not self.stop.is_set():
            # connect in waves, so unregistered connections stay under central's cap
            # (64 per address, shared with the real monitors on this host)
            now = time.monotonic()
            while (self.pending and self.pending[0][0] <= now
                   and len(self.socks) - len(self.registered) < 30):
                self._connect(self.pending.pop(0)[1])
            for key, mask in self.sel.select(0.05):
                cp = key.data
                if mask & selectors.EVENT_WRITE:
                    self._connected(cp)
                    continue
                try:
                    data = self.socks[cp].recv(65536)
                except (BlockingIOError, KeyError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.close(cp)
                    continue
                if cp in self.registered:
                    continue  # heartbeat acks: read, not decoded (these stand for other machines)
                for frame in self.decoders[cp].feed(data):
                    if frame["type"] == "challenge":
                        s = secret(self.creds, cp)
                        self.send(cp, m.Prove(cp_id=cp, proof=auth.register_proof(
                            s, cp, self.nonces[cp], frame["nonce"])))
                        self.keys[cp] = auth.kafka_key(s, self.nonces[cp], frame["nonce"])
                    elif frame["type"] == "register_ok":
                        self.registered.add(cp)
                        self.beats[cp] = encode_frame(m.Heartbeat(cp_id=cp).to_wire())
            if time.monotonic() >= next_beat:
                next_beat += 1
                for cp in list(self.registered):  # one encoded heartbeat each, sent again
                    self.send_bytes(cp, self.beats[cp])

    def send(self, cp: str, msg: m.Message) -> None:
        self.send_bytes(cp, encode_frame(msg.to_wire()))

    def send_bytes(self, cp: str, frame: bytes) -> None:
        sock = self.socks.get(cp)
        if sock is None:
            return
        try:
            sock.sendall(frame)
        except (BlockingIOError, OSError):
            pass

    def close(self, cp: str) -> None:
        """Central closed it (refused, or lost): like a real monitor, try again in 1 s."""
        sock = self.socks.pop(cp, None)
        if sock is not None:
            try:
                self.sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
            if cp in self.registered:
                self.registered.discard(cp)
                self.lost += 1
            if not self.stop.is_set():
                self.pending.append((time.monotonic() + 1.0, cp))
                self.pending.sort()


def _monitors_child(port: int, cp_ids: list[str], creds: Path, out: Any, stop: Any) -> None:
    """The stand-in monitors' own process: reports (cp, key) once registered, (cp, None)
    when central drops one. They stand for monitors on thousands of other machines, so
    they run a little ahead of this machine's other processes (nice -5): a 2-core box
    saturated by the load must not make them late with heartbeats central then (rightly)
    counts as silence."""
    try:
        os.nice(-5)
    except OSError:
        pass  # not root: they run as any process
    monitors = Monitors(port, cp_ids, creds)
    told: set[str] = set()
    while not stop.is_set():
        now = set(monitors.registered)
        for cp in now - told:
            out.put((cp, monitors.keys.get(cp)))
        for cp in told - now:
            out.put((cp, None))
        told = now
        time.sleep(0.1)
    monitors.stop.set()


class MonitorsProcess:
    """The stand-in monitors in a process of their own: the load generator's Kafka work
    (signing and sending readings, reading every answer) must not hold their heartbeats
    back behind the GIL, or central rightly drops them as silent."""

    def __init__(self, port: int, cp_ids: list[str], creds: Path, forward: Any = None) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.queue = ctx.Queue()
        self.forward = forward  # (cp, key or None) also go there: the engines' process
        self.stop_event = ctx.Event()
        self.keys: dict[str, str] = {}
        self.registered: set[str] = set()
        self.lost = 0
        self.proc = ctx.Process(target=_monitors_child, daemon=True,
                                args=(port, cp_ids, creds, self.queue, self.stop_event))
        self.proc.start()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                cp, key = self.queue.get()
            except (EOFError, OSError):
                return
            if self.forward is not None:
                self.forward.put((cp, key))
            if key is None:
                self.registered.discard(cp)
                self.lost += 1
            else:
                self.keys[cp] = key
                self.registered.add(cp)

    def close(self) -> None:
        self.stop_event.set()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


class Engines:
    """Engine stand-ins: obey start/end orders for their CPs; signed telemetry each second
    of each supply (counted from its own start, as a real engine's timer: readings are
    spread over the second, not sent all at once). One thread owns the supplies; orders
    reach it through a queue, so whoever reads control_topic is never held up."""

    def __init__(self, bus: KafkaBus, keys: dict[str, str], power: float = 0.5) -> None:
        self.bus, self.keys, self.power = bus, keys, power
        self.supplies: dict[str, list[Any]] = {}  # cp -> [order, kwh, next reading due]
        self.due: list[tuple[float, str]] = []  # a heap of (next reading due, cp)
        self.orders: queue.SimpleQueue[m.Message] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.sent = 0
        threading.Thread(target=self._run, daemon=True).start()

    def order(self, msg: m.Message, _delivery: object = None) -> None:
        """A record of control_topic: the orders to these CPs are queued for the owner."""
        if isinstance(msg, (m.StartSupply, m.EndSupply)) and msg.cp_id in self.keys:
            self.orders.put(msg)

    def _apply(self, msg: m.Message) -> None:
        if isinstance(msg, m.StartSupply):
            due = time.monotonic() + 1.0
            self.supplies[msg.cp_id] = [msg, 0.0, due]
            heapq.heappush(self.due, (due, msg.cp_id))
            self._telemetry(msg, 0.0, False, "")
        elif isinstance(msg, m.EndSupply):
            entry = self.supplies.pop(msg.cp_id, None)
            if entry is not None:
                self._telemetry(entry[0], entry[1], True, str(msg.reason))

    def _telemetry(self, order: m.StartSupply, kwh: float, final: bool, reason: str) -> None:
        reading = m.Telemetry(
            cp_id=order.cp_id, driver_id=order.driver_id, consumo_kwh=round(kwh, 4),
            importe_eur=round(kwh * order.price_eur_kwh, 2), session_id=order.session_id,
            final=final, reason=reason)
        key = self.keys.get(order.cp_id)
        if key is None:  # central dropped its monitor meanwhile
            return
        self.bus.send(TELEMETRY, auth.sign(reading, key), order.cp_id)
        self.sent += 1

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._apply(self.orders.get(timeout=0.01))
                continue  # orders first: a start or an end waits for nobody
            except queue.Empty:
                pass
            now = time.monotonic()
            while self.due and self.due[0][0] <= now:
                due, cp = heapq.heappop(self.due)
                entry = self.supplies.get(cp)
                if entry is None or entry[2] != due:
                    continue  # ended (or started again) meanwhile
                entry[1] += self.power
                entry[2] = due + 1.0
                heapq.heappush(self.due, (entry[2], cp))
                self._telemetry(entry[0], entry[1], False, "")


def _engines_child(kafka: str, prefix: str, keys_in: Any, sent: Any, ready: Any,
                   stop: Any) -> None:
    """The stand-in engines' own process: they read control_topic for their orders and
    send 2,500 signed readings a second at 5,000 CPs; in the process that plays the
    drivers (and measures what they see) that work would delay every answer read."""
    bus = KafkaBus(kafka, prefix=prefix, client_id="evc-bench-engines")
    engines = Engines(bus, {})
    consumer = bus.consumer([CONTROL])  # as engines read: at once
    done = threading.Event()
    threading.Thread(target=consumer.run, args=(engines.order, done), daemon=True).start()

    def take_keys() -> None:
        while not done.is_set():
            try:
                cp, key = keys_in.get(timeout=0.2)
            except (queue.Empty, EOFError, OSError):
                continue
            if key is None:
                engines.keys.pop(cp, None)
            else:
                engines.keys[cp] = key

    threading.Thread(target=take_keys, daemon=True).start()
    ready.set()
    while not stop.wait(0.2):
        sent.value = engines.sent
    done.set()
    engines.stop.set()
    bus.close()


class EnginesProcess:
    """The stand-in engines in a process of their own (``_engines_child``)."""

    def __init__(self, kafka: str, prefix: str) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.keys = ctx.Queue()
        self._sent = ctx.Value("q", 0)
        self.stop_event = ctx.Event()
        self.ready = ctx.Event()  # reading control_topic (no order can be missed)
        self.proc = ctx.Process(target=_engines_child, daemon=True,
                                args=(kafka, prefix, self.keys, self._sent, self.ready,
                                      self.stop_event))
        self.proc.start()

    @property
    def sent(self) -> int:
        return int(self._sent.value)

    def close(self) -> None:
        self.stop_event.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


CHURN_HOLD = 3  # seconds a steady-state supply lasts


class Churn(threading.Thread):
    """The steady part of a step: while every other supply runs, ``rate`` new supplies a
    second start at CPs left idle, each ended CHURN_HOLD s after its authorization. What
    these drivers see is the latency of a busy network; the first burst (every request
    within one second) is the worst case on top. Shares the control reader's records."""

    def __init__(self, bus: KafkaBus, cps: list[str], drivers: list[str],
                 keys: dict[str, str], rate: int, lock: threading.Lock,
                 answers: dict[str, float], auth_of: dict[str, m.Authorization],
                 tickets: dict[str, float]) -> None:
        super().__init__(daemon=True)
        self.bus, self.keys, self.rate, self.lock = bus, keys, rate, lock
        self.answers, self.auth_of, self.tickets = answers, auth_of, tickets
        self.free_cps, self.free_drivers = list(cps), list(drivers)
        self.asked: dict[str, tuple[float, str, str]] = {}  # request id -> (t, cp, driver)
        self.running: dict[str, tuple[float, str, str]] = {}  # session -> (end at, cp, drv)
        self.ended: dict[str, tuple[float, str, str]] = {}  # session -> (t, cp, driver)
        self.answered: list[float] = []
        self.ticketed: list[float] = []
        self.stop = threading.Event()
        self.stopped = threading.Event()
        self.deadline = float("inf")  # set by finish()

    def run(self) -> None:
        next_start = time.monotonic()
        while not self.stop.is_set() or self.asked or self.running or self.ended:
            now = time.monotonic()
            if self.stop.is_set() and now > self.deadline:
                break
            if not self.stop.is_set() and now >= next_start:
                next_start += 1.0 / self.rate
                if self.free_cps and self.free_drivers:
                    cp, driver = self.free_cps.pop(0), self.free_drivers.pop(0)
                    req = auth.sign(m.ChargeRequest(driver_id=driver, cp_id=cp),
                                    self.keys[driver])
                    self.asked[req.msg_id] = (time.monotonic(), cp, driver)
                    self.bus.send(REQUESTS, req, cp)
            with self.lock:
                for request_id, (t, cp, driver) in list(self.asked.items()):
                    if request_id in self.answers:
                        del self.asked[request_id]
                        self.answered.append(self.answers[request_id] - t)
                        answer = self.auth_of[request_id]
                        if answer.authorized:
                            self.running[answer.session_id] = (
                                self.answers[request_id] + CHURN_HOLD, cp, driver)
                        else:
                            self.free_cps.append(cp)
                            self.free_drivers.append(driver)
                for session, (t, cp, driver) in list(self.ended.items()):
                    if session in self.tickets:
                        del self.ended[session]
                        self.ticketed.append(self.tickets[session] - t)
                        self.free_cps.append(cp)
                        self.free_drivers.append(driver)
            for session, (end_at, cp, driver) in list(self.running.items()):
                if now >= end_at:
                    del self.running[session]
                    end = auth.sign(m.EndRequest(driver_id=driver, cp_id=cp,
                                                 session_id=session), self.keys[driver])
                    self.ended[session] = (time.monotonic(), cp, driver)
                    self.bus.send(REQUESTS, end, cp)
            time.sleep(0.002)
        self.stopped.set()

    def finish(self, timeout: float = 30) -> None:
        """No new supplies; the running ones end and their tickets are waited for."""
        self.deadline = time.monotonic() + timeout
        self.stop.set()
        self.stopped.wait(timeout + 5)

    def answer_times(self) -> list[float]:
        return list(self.answered)

    def ticket_times(self) -> list[float]:
        return list(self.ticketed)


class Probe:
    """Reads what one engine or one driver reads (the same keyed assignment) and counts it."""

    def __init__(self, bus: KafkaBus, keys: dict[str, list[str]]) -> None:
        self.count = 0
        self.stop = threading.Event()
        self.consumer = bus.consumer(list(keys), keys=keys)
        threading.Thread(target=self.consumer.run, args=(self._read, self.stop),
                         daemon=True).start()

    def _read(self, _msg: m.Message, _d: object) -> None:
        self.count += 1


class Real:
    """Real `evc` processes: CPs (engine + monitor) and drivers looping over them."""

    def __init__(self, tmp: Path, kafka: str, prefix: str, central_port: int,
                 cps: list[str], drivers: list[str], env: dict[str, str]) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp, self.env = tmp, env
        self.driver_logs: list[Path] = []
        common = ["--topic-prefix", prefix, "--kafka-wait", "60"]
        for cp in cps:
            port = free_port()
            self._start(f"engine-{cp}", ["cp-engine", kafka, "--listen", f"127.0.0.1:{port}",
                                         "--id", cp, "--state-dir", str(tmp / "state"),
                                         *common])
            self._start(f"monitor-{cp}", ["cp-monitor", f"127.0.0.1:{port}",
                                          f"127.0.0.1:{central_port}", cp])
        self.driver_args = []
        for i, driver in enumerate(drivers):
            path = tmp / f"requests-{driver}.txt"
            path.write_text("".join(f"{cps[(i + k) % len(cps)]}\n" for k in range(1000)))
            self.driver_args.append((driver, ["driver", kafka, driver, "--file", str(path),
                                              "--charge-seconds", "5", "--pause", "1",
                                              "--state-dir", str(tmp / "state"), *common]))

    def _start(self, name: str, args: list[str]) -> Path:
        log = self.tmp / f"{name}.log"
        out = open(log, "ab")  # noqa: SIM115 - owned by the child
        self.procs.append(subprocess.Popen(
            EVC + args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, start_new_session=True))
        out.close()
        return log

    def start_drivers(self) -> None:
        for driver, args in self.driver_args:
            self.driver_logs.append(self._start(f"driver-{driver}", args))

    def latencies(self, since: float) -> tuple[list[float], list[float]]:
        """(request -> answer, end -> ticket) in seconds, from the real drivers' own lines
        stamped after ``since`` (seconds of the local day)."""
        stamp = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) ")
        answer, ticket = [], []
        for log in self.driver_logs:
            asked = ended = None
            for line in log.read_text(errors="replace").splitlines():
                match = stamp.match(line)
                if not match:
                    continue
                h, mi, s, ms = (int(x) for x in match.groups())
                t = h * 3600 + mi * 60 + s + ms / 1000
                if t < since:
                    continue
                if "requested a charge" in line:
                    asked = t
                elif ("AUTHORIZED at" in line or "DENIED at" in line) and asked is not None:
                    answer.append(t - asked)
                    asked = None
                elif "asked to end the supply" in line:
                    ended = t
                elif "TICKET at" in line and ended is not None:
                    ticket.append(t - ended)
                    ended = None
        return answer, ticket

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def started(proc: subprocess.Popen[bytes], out: Path, text: str, what: str,
            timeout: float = 120) -> None:
    """Until ``out`` (the process' output) shows ``text``; SystemExit if it dies first."""
    deadline = time.monotonic() + timeout
    while text not in out.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start:\n" + out.read_text(errors="replace"))
        time.sleep(0.1)


def machine_ms() -> float:
    """How fast this machine is right now: the best of three runs of a fixed piece of
    pure-Python work (~0.7 s on the machine the README's figures come from). A shared
    machine's speed varies by half or more over an hour; figures from a slow moment
    show it here."""
    def once() -> float:
        t0 = time.perf_counter()
        texts = {}
        for i in range(200_000):
            texts[i % 1000] = json.dumps({"a": i, "b": "x" * 10})
        return (time.perf_counter() - t0) * 1000
    return round(min(once() for _ in range(3)))


def board_render_ms(n: int) -> float:
    """The median time to render central's board of ``n`` CPs (a 160x60 screen)."""
    from benchmarks.board_render import build, measure

    with tempfile.TemporaryDirectory() as folder:
        return round(statistics.median(measure(build(n, Path(folder)), 160, 60, 5)) * 1000, 2)


def consumer_lag(bus: KafkaBus, group: str) -> int:
    """Records central has not yet applied (and committed), over its topics' partitions."""
    return bus.group_lag(group, [REQUESTS, TELEMETRY])


def step(args: argparse.Namespace, n_cps: int, n_supplies: int) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:6]}-"
    tmp = Path(tempfile.mkdtemp(prefix="evc-scale-"))
    creds = tmp / "credentials"
    cps = [f"CP-{i:04d}" for i in range(n_cps)]
    real_cps = cps[:args.real_cps]
    sim_cps = cps[args.real_cps:]
    sim_drivers = [f"D-{i:05d}" for i in range(n_supplies)]
    # the steady part: supplies starting at the CPs left idle, a steady number a second
    churn_rate = max(5, n_cps // 100)
    churn_drivers = [f"C-{i:05d}" for i in range(churn_rate * (CHURN_HOLD + 5))]
    idle_cps = sim_cps[n_supplies:]
    real_drivers = [f"R-{i:03d}" for i in range(args.real_drivers)]
    (tmp / "cps.csv").write_text("".join(f"{cp},bench,0.30\n" for cp in cps))
    (tmp / "drivers.txt").write_text("".join(f"{d}\n" for d in sim_drivers + real_drivers
                                             + churn_drivers))
    port = free_port()
    speed = machine_ms()  # before anything of this step runs
    env = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1", EVC_CREDENTIALS_DIR=str(creds))
    central = subprocess.Popen(
        EVC + ["central", str(port), args.kafka, str(tmp / "central.json"), "--cps",
               str(tmp / "cps.csv"), "--drivers", str(tmp / "drivers.txt"),
               "--topic-prefix", prefix, "--display", "plain", "--listen-host", "127.0.0.1",
               "--log-file", str(tmp / "central.log"), "--partitions", str(args.partitions)],
        stdout=open(tmp / "central.out", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    figures: dict[str, Any] = {"machine_ms": speed, "cps": n_cps, "supplies": n_supplies,
                               "partitions": args.partitions,
                               "real_cps": len(real_cps), "real_drivers": len(real_drivers)}
    real = None
    try:
        started(central, tmp / "central.out", "central ready", "central")
        bus = KafkaBus(args.kafka, prefix=prefix, client_id="evc-bench")
        real = Real(tmp, args.kafka, prefix, port, real_cps, real_drivers, env)
        real.start_drivers()
        # the real CPs first (a hundred Python processes starting take the CPU for a
        # while): registrations/s is then central's own figure
        t_real = time.monotonic()
        while time.monotonic() - t_real < 240:
            out = (tmp / "central.out").read_text(errors="replace")
            up = set(re.findall(r" (CP-\d+) \w+ -> Activado", out))
            answered = sum(1 for log in real.driver_logs if "AUTHORIZED at" in
                           log.read_text(errors="replace"))
            if len(up & set(real_cps)) >= len(real_cps) and answered >= len(real_drivers):
                break
            time.sleep(0.5)
        figures["real_cps_up_s"] = round(time.monotonic() - t_real, 1)
        print(f"{len(real_cps)} real CPs registered and {len(real_drivers)} real drivers "
              f"charging after {figures['real_cps_up_s']} s", flush=True)
        engines = EnginesProcess(args.kafka, prefix)
        if not engines.ready.wait(60):
            raise SystemExit("the stand-in engines did not start")
        t0 = time.monotonic()
        monitors = MonitorsProcess(port, sim_cps, creds, forward=engines.keys)
        while len(monitors.registered) < len(sim_cps) and time.monotonic() - t0 < 300:
            time.sleep(0.05)
        took = time.monotonic() - t0
        figures["registrations_per_s"] = round(len(monitors.registered) / took, 1)
        print(f"{n_cps} CPs: {len(monitors.registered)} simulated monitors registered in "
              f"{took:.1f} s ({figures['registrations_per_s']}/s)", flush=True)
        answers: dict[str, float] = {}
        tickets: dict[str, float] = {}
        # where each authorization's time went (wall clock): decided in central (its
        # ts), written to Kafka (the record's timestamp), read here
        stages: dict[str, tuple[float, float, float]] = {}
        auth_of: dict[str, m.Authorization] = {}
        # and each ticket's: the end order written, the ticket decided (the engine's final
        # reading read), the ticket read here (wall clock)
        end_orders: dict[str, float] = {}
        ticket_stages: dict[str, tuple[float, float]] = {}
        lock = threading.Lock()
        stop = threading.Event()
        watcher = bus.consumer([CONTROL])  # every answer and ticket, read as drivers read

        def on_control(msg: m.Message, delivery: Any) -> None:
            now = time.monotonic()
            with lock:
                if isinstance(msg, m.Authorization):
                    answers[msg.request_id] = now
                    auth_of[msg.request_id] = msg
                    stages[msg.request_id] = (msg.ts, delivery.timestamp, time.time())
                elif isinstance(msg, m.Ticket):
                    tickets[msg.session_id] = now
                    ticket_stages[msg.session_id] = (msg.ts, time.time())
                elif isinstance(msg, m.EndSupply):
                    end_orders[msg.session_id] = delivery.timestamp

        threading.Thread(target=watcher.run, args=(on_control, stop), daemon=True).start()
        # what one engine reads (its CP's control partition, central's heartbeat) and what
        # one charging driver reads of telemetry (its CP's partition)
        engine_probe = Probe(bus, {CONTROL: [sim_cps[0]], NETWORK: [CENTRAL_KEY]})
        driver_probe = Probe(bus, {TELEMETRY: [sim_cps[0]]})
        keys = {d: auth.driver_key(secret(creds, d)) for d in sim_drivers + churn_drivers}
        tcp = [pid for pid, cmd in children(central.pid) if "evc.central.server" in cmd]
        cpu0, wall0 = cpu_seconds(central.pid), time.monotonic()
        tcp0 = sum(cpu_seconds(pid) for pid in tcp)
        own0 = sum(os.times()[:2])
        lt = time.localtime()
        since = lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec  # the measured window
        sent: dict[str, float] = {}
        sent_wall: dict[str, float] = {}
        pace = min(0.002, 1.0 / max(1, n_supplies))  # all requests within about a second
        for i, driver in enumerate(sim_drivers):
            req = auth.sign(m.ChargeRequest(driver_id=driver, cp_id=sim_cps[i]), keys[driver])
            sent[req.msg_id] = time.monotonic()
            sent_wall[req.msg_id] = req.ts
            bus.send(REQUESTS, req, req.cp_id)
            time.sleep(pace)
        deadline = time.monotonic() + 60
        while len(answers.keys() & sent.keys()) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        burst_cpu = cpu_seconds(central.pid) - cpu0  # central's CPU for the whole burst
        figures["authorization"] = summary([answers[k] - v for k, v in sent.items()
                                            if k in answers])
        figures["authorization_stages"] = {
            "to_decided": summary([stages[k][0] - t for k, t in sent_wall.items()
                                   if k in stages]),
            "decided_to_written": summary([stages[k][1] - stages[k][0] for k in sent_wall
                                           if k in stages]),
            "written_to_read": summary([stages[k][2] - stages[k][1] for k in sent_wall
                                        if k in stages])}
        figures["authorized"] = sum(1 for k in sent if k in auth_of and auth_of[k].authorized)
        # the machine-independent figure: central's CPU time per answer of the burst (its
        # readings, heartbeat events and board meanwhile included, as they are in a burst)
        figures["cpu_ms_per_authorization"] = round(1000 * burst_cpu / max(1, len(
            answers.keys() & sent.keys())), 2)
        rss: list[tuple[float, float]] = []
        lags: list[int] = []
        churn = Churn(bus, idle_cps, churn_drivers, keys, churn_rate, lock, answers, auth_of,
                      tickets)
        churn.start()
        t_run = time.monotonic()
        telemetry0 = engines.sent
        probes0 = (engine_probe.count, driver_probe.count)
        while time.monotonic() - t_run < args.seconds:  # supplies run: telemetry at 1 Hz
            lags.append(consumer_lag(bus, f"{prefix}evc-central"))
            rss.append((time.monotonic() - t_run, rss_mb(central.pid)))
            time.sleep(1.0)
        cpu1, wall1 = cpu_seconds(central.pid), time.monotonic()
        tcp1 = sum(cpu_seconds(pid) for pid in tcp)
        churn.finish()
        figures["steady_rate_per_s"] = churn_rate
        figures["steady_authorization"] = summary(churn.answer_times())
        figures["steady_ticket"] = summary(churn.ticket_times())
        figures["telemetry_per_s"] = round((engines.sent - telemetry0) / (wall1 - t_run), 1)
        figures["engine_reads_per_s"] = round((engine_probe.count - probes0[0])
                                              / (wall1 - t_run), 1)
        figures["driver_telemetry_reads_per_s"] = round((driver_probe.count - probes0[1])
                                                        / (wall1 - t_run), 1)
        figures["lag_records_max"] = max(lags, default=0)
        figures["lag_s_max"] = round(max(lags, default=0) / max(1.0, figures["telemetry_per_s"]
                                                                  + n_cps), 2)
        figures["monitors_dropped"] = monitors.lost
        figures["load_generator_cpu_pct"] = round(100 * (sum(os.times()[:2]) - own0)
                                                  / (wall1 - wall0))
        figures["central_cpu_pct"] = round(100 * (cpu1 - cpu0) / (wall1 - wall0))
        figures["central_tcp_cpu_pct"] = round(100 * (tcp1 - tcp0) / (wall1 - wall0))
        figures["central_rss_mb"] = round(rss[-1][1] if rss else rss_mb(central.pid), 1)
        at_minute = [r for t, r in rss if t >= 60]
        if at_minute:
            figures["rss_at_minute_1_mb"] = round(at_minute[0], 1)
            figures["rss_growth_pct"] = round(100 * (rss[-1][1] / at_minute[0] - 1), 1)
        ends: dict[str, float] = {}
        ends_wall: dict[str, float] = {}
        ended_early = 0
        cpu_ends = cpu_seconds(central.pid)
        for auth_msg in list(auth_of.values()):
            if auth_msg.authorized and auth_msg.request_id in sent:
                if auth_msg.session_id in tickets:  # ended already (its CP was lost)
                    ended_early += 1
                    continue
                end = auth.sign(m.EndRequest(driver_id=auth_msg.driver_id,
                                             cp_id=auth_msg.cp_id,
                                             session_id=auth_msg.session_id),
                                keys[auth_msg.driver_id])
                ends[auth_msg.session_id] = time.monotonic()
                ends_wall[auth_msg.session_id] = end.ts
                bus.send(REQUESTS, end, auth_msg.cp_id)
                time.sleep(pace)
        deadline = time.monotonic() + 60
        while len(ends.keys() & tickets.keys()) < len(ends) and time.monotonic() < deadline:
            time.sleep(0.05)
        figures["ticket"] = summary([tickets[s] - t for s, t in ends.items() if s in tickets])
        figures["cpu_ms_per_ticket"] = round(1000 * (cpu_seconds(central.pid) - cpu_ends)
                                             / max(1, len(ends.keys() & tickets.keys())), 2)
        done = [s for s in ends_wall if s in ticket_stages and s in end_orders]
        figures["ticket_stages"] = {
            "to_end_order": summary([end_orders[s] - ends_wall[s] for s in done]),
            "end_order_to_ticket": summary([ticket_stages[s][0] - end_orders[s]
                                            for s in done]),
            "ticket_to_read": summary([ticket_stages[s][1] - ticket_stages[s][0]
                                       for s in done])}
        figures["ended_before_asked"] = ended_early
        figures["tickets"] = len(ends.keys() & tickets.keys())
        answer, ticket = real.latencies(since)
        figures["real_driver_authorization"] = summary(answer)
        figures["real_driver_ticket"] = summary(ticket)
        figures["board_render_ms"] = board_render_ms(n_cps)
        stop.set()
        engine_probe.stop.set()
        driver_probe.stop.set()
        engines.close()
        monitors.close()
        bus.close()
    finally:
        if real is not None:
            real.stop()
        central.terminate()
        try:
            central.wait(10)
        except subprocess.TimeoutExpired:
            central.kill()
        try:  # the next step (or run) gets a broker without this one's partitions
            with KafkaBus(args.kafka, prefix=prefix, client_id="evc-bench-cleanup") as admin:
                admin.delete_topics()
        except BusError as exc:
            print(f"  (could not delete this step's topics: {exc})")
    print(f"  registrations {figures.get('registrations_per_s')}/s; authorized "
          f"{figures.get('authorized')} of {n_supplies}; tickets {figures.get('tickets')} "
          f"(+{figures.get('ended_before_asked')} ended before asked); simulated monitors "
          f"dropped by central: {figures.get('monitors_dropped')}")
    show("request -> authorization (simulated)", figures.get("authorization", {}))
    for stage, label in (("to_decided", "  request -> decided in central"),
                         ("decided_to_written", "  decided -> written to Kafka"),
                         ("written_to_read", "  written -> read by the driver")):
        show(label, figures.get("authorization_stages", {}).get(stage, {}))
    print(f"  steady: {figures.get('steady_rate_per_s')} new supplies a second at idle CPs "
          f"while the others run, each ended after {CHURN_HOLD} s:")
    show("  request -> authorization", figures.get("steady_authorization", {}))
    show("  end request -> ticket", figures.get("steady_ticket", {}))
    show("request -> authorization (real drivers)",
         figures.get("real_driver_authorization", {}))
    show("end request -> ticket (simulated)", figures.get("ticket", {}))
    for stage, label in (("to_end_order", "  end request -> end order written"),
                         ("end_order_to_ticket", "  end order -> ticket decided"),
                         ("ticket_to_read", "  ticket decided -> read by the driver")):
        show(label, figures.get("ticket_stages", {}).get(stage, {}))
    show("end request -> ticket (real drivers)", figures.get("real_driver_ticket", {}))
    print(f"  telemetry {figures.get('telemetry_per_s')} msg/s; central lag max "
          f"{figures.get('lag_records_max')} records (~{figures.get('lag_s_max')} s); CPU "
          f"{figures.get('central_cpu_pct')}% of one core + its TCP server "
          f"{figures.get('central_tcp_cpu_pct')}% (load generator "
          f"{figures.get('load_generator_cpu_pct')}%); RSS {figures.get('central_rss_mb')} MB"
          + (f" (minute 1: {figures['rss_at_minute_1_mb']} MB, "
             f"{figures['rss_growth_pct']:+} %)" if "rss_growth_pct" in figures else "")
          + f"; board render {figures.get('board_render_ms')} ms", flush=True)
    print(f"  central's CPU per authorization {figures.get('cpu_ms_per_authorization')} ms, "
          f"per ticket {figures.get('cpu_ms_per_ticket')} ms (over the burst and its ends)")
    print(f"  machine speed: {figures.get('machine_ms')} ms for the fixed work (lower is "
          "faster)")
    print(f"  one engine reads {figures.get('engine_reads_per_s')} records/s; one charging "
          f"driver reads {figures.get('driver_telemetry_reads_per_s')} telemetry records/s "
          f"(all CPs together: {figures.get('telemetry_per_s')}/s)", flush=True)
    return figures


def main() -> int:
    # SIGTERM ends the run like Ctrl+C: the finally blocks stop every process started
    def terminated(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup
        sys.exit(143)

    signal.signal(signal.SIGTERM, terminated)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cps", type=int, default=1000)
    parser.add_argument("--supplies", type=int, default=None, help="default: half the CPs")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--ramp", action="store_true", help=f"steps of {RAMP} CPs")
    parser.add_argument("--real-cps", type=int, default=50)
    parser.add_argument("--real-drivers", type=int, default=20)
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--partitions", type=int, default=3,
                        help="partitions of each topic (central's --partitions)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of each step; the figures are their median")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    steps = RAMP if args.ramp else (args.cps,)
    results = []
    for n in steps:
        supplies = args.supplies if args.supplies is not None else n // 2
        runs = []
        for i in range(args.runs):
            if args.runs > 1:
                print(f"run {i + 1} of {args.runs}", flush=True)
            runs.append(step(args, n, min(supplies, n - args.real_cps)))
        results.append(median_of(runs))
    if args.json:
        print(json.dumps(results if args.ramp else results[0]))
    return 0


MEDIAN_FIGURES = (("authorization", "p50_ms"), ("authorization", "p99_ms"),
                  ("ticket", "p50_ms"), ("ticket", "p99_ms"),
                  ("steady_authorization", "p99_ms"), ("steady_ticket", "p99_ms"),
                  ("cpu_ms_per_authorization", None), ("cpu_ms_per_ticket", None),
                  ("central_cpu_pct", None), ("monitors_dropped", None))


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of several runs of one step, and their median (one noisy run neither
    hides nor invents a regression); each run keeps its machine-speed figure."""
    median: dict[str, Any] = {}
    for figure, key in MEDIAN_FIGURES:
        values = [r[figure][key] if key else r[figure] for r in runs
                  if figure in r and (key is None or key in r[figure])]
        if values:
            median[f"{figure}_{key}" if key else figure] = statistics.median(values)
    if len(runs) > 1:
        speeds = ", ".join(f"{r.get('machine_ms')}" for r in runs)
        print(f"median of {len(runs)} runs ({runs[0]['cps']} CPs; machine speed {speeds} ms):")
        for name, value in median.items():
            print(f"  {name:<32} {value}")
    return {"runs": runs, "median": median, "cps": runs[0]["cps"]}


if __name__ == "__main__":
    sys.exit(main())

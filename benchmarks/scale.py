"""Central under load: N monitors on TCP, S supplies at 1 Hz telemetry, drivers' latency.

    python -m benchmarks.scale [--cps 1000] [--supplies 500] [--seconds 30]
                               [--kafka 127.0.0.1:9092]

Runs a real `evc central` (plain display) against the real broker. This process plays
the rest of the network with light-weight stand-ins speaking the real protocol:
N monitors (one selector thread: register, heartbeat every second), engines for every
CP (one Kafka consumer on control_topic; telemetry every second for each supply), and
S drivers whose requests are timed until their authorization and, at the end, until
their ticket. Then it measures how fast central notices faults and lost monitors (the
time until central prints the state change), and samples central's CPU and memory.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from benchmarks.procinfo import cpu_seconds, rss_mb
from evc.bus import KafkaBus
from evc.protocol import messages as m
from evc.protocol.framing import FrameDecoder, encode_frame
from evc.protocol.topics import CONTROL, REQUESTS, TELEMETRY

EVC = [sys.executable, "-m", "evc.cli"]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def show(label: str, values_s: list[float]) -> None:
    values_s = [v for v in values_s if v == v]  # NaN: never seen
    if not values_s:
        print(f"{label:44s} no samples")
        return
    ms = [v * 1000 for v in values_s]
    print(f"{label:44s} n={len(ms):4d}  median {statistics.median(ms):8.1f} ms  "
          f"p99 {pct(ms, 0.99):8.1f} ms  max {max(ms):8.1f} ms")


class CentralOutput:
    """Central's stdout lines, each stamped when it arrived here."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self.lock:
                self.lines.append((time.monotonic(), line.rstrip()))

    def time_to(self, action, needle: str, timeout: float = 10.0) -> float:
        """Seconds from doing ``action`` until central prints a line with ``needle``."""
        t = time.monotonic()
        action()
        while (seen := self.first(needle, t)) is None:
            if time.monotonic() - t > timeout:
                return float("nan")
            time.sleep(0.005)
        return seen - t

    def first(self, needle: str, after: float) -> float | None:
        with self.lock:
            for stamp, line in self.lines:
                if stamp >= after and needle in line:
                    return stamp
        return None


class Monitors:
    """N monitor stand-ins on one selector: register, then a heartbeat every second."""

    def __init__(self, port: int, cp_ids: list[str]) -> None:
        self.sel = selectors.DefaultSelector()
        self.socks: dict[str, socket.socket] = {}
        self.decoders: dict[str, FrameDecoder] = {}
        self.registered: set[str] = set()
        self.stop = threading.Event()
        for cp in cp_ids:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(encode_frame(m.Register(cp_id=cp, location="bench").to_wire()))
            sock.setblocking(False)
            self.socks[cp] = sock
            self.decoders[cp] = FrameDecoder()
            self.sel.register(sock, selectors.EVENT_READ, cp)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        next_beat = time.monotonic() + 1
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.1):
                cp = key.data
                try:
                    data = self.socks[cp].recv(65536)
                except (BlockingIOError, KeyError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.close(cp)
                    continue
                for frame in self.decoders[cp].feed(data):
                    if frame["type"] == "register_ok":
                        self.registered.add(cp)
            if time.monotonic() >= next_beat:
                next_beat += 1
                for cp, _sock in list(self.socks.items()):
                    self.send(cp, m.Heartbeat(cp_id=cp))

    def send(self, cp: str, msg: m.Message) -> None:
        sock = self.socks.get(cp)
        if sock is None:
            return
        try:
            sock.sendall(encode_frame(msg.to_wire()))
        except (BlockingIOError, OSError):
            pass

    def close(self, cp: str) -> None:
        sock = self.socks.pop(cp, None)
        if sock is not None:
            try:
                self.sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()


class Engines:
    """Every CP's engine stand-in: obeys start/end orders, telemetry each second."""

    def __init__(self, bus: KafkaBus, power: float = 0.5) -> None:
        self.bus = bus
        self.power = power
        self.supplies: dict[str, list] = {}  # cp -> [order, kwh]
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.consumer = bus.consumer([CONTROL])
        self.sent = 0
        threading.Thread(target=self.consumer.run, args=(self._order, self.stop),
                         daemon=True).start()
        threading.Thread(target=self._tick, daemon=True).start()

    def _order(self, msg: m.Message, _d: object) -> None:
        with self.lock:
            if isinstance(msg, m.StartSupply):
                self.supplies[msg.cp_id] = [msg, 0.0]
                self._telemetry(msg, 0.0, False, "")
            elif isinstance(msg, m.EndSupply):
                entry = self.supplies.pop(msg.cp_id, None)
                if entry is not None:
                    self._telemetry(entry[0], entry[1], True, str(msg.reason))

    def _telemetry(self, order: m.StartSupply, kwh: float, final: bool, reason: str) -> None:
        self.bus.send(TELEMETRY, m.Telemetry(
            cp_id=order.cp_id, driver_id=order.driver_id, consumo_kwh=round(kwh, 4),
            importe_eur=round(kwh * order.price_eur_kwh, 2), session_id=order.session_id,
            final=final, reason=reason), order.cp_id)
        self.sent += 1

    def _tick(self) -> None:
        while not self.stop.wait(1.0):
            with self.lock:
                for entry in self.supplies.values():
                    entry[1] += self.power
                    self._telemetry(entry[0], entry[1], False, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cps", type=int, default=1000)
    parser.add_argument("--supplies", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--probes", type=int, default=20, help="faults and losses timed")
    args = parser.parse_args()
    prefix = f"bench{uuid.uuid4().hex[:6]}-"
    tmp = Path(tempfile.mkdtemp(prefix="evc-scale-"))
    cps = [f"CP-{i:04d}" for i in range(args.cps)]
    (tmp / "cps.csv").write_text("".join(f"{cp},bench,0.30\n" for cp in cps))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    central = subprocess.Popen(
        EVC + ["central", str(port), args.kafka, str(tmp / "central.json"), "--cps",
               str(tmp / "cps.csv"), "--topic-prefix", prefix, "--display", "plain",
               "--listen-host", "127.0.0.1", "--log-file", str(tmp / "central.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    out = CentralOutput(central)
    try:
        while out.first("central ready", 0) is None:
            if central.poll() is not None:
                raise SystemExit("central exited:\n" + "\n".join(line for _, line in out.lines))
            time.sleep(0.1)
        bus = KafkaBus(args.kafka, prefix=prefix, client_id="evc-bench")
        engines = Engines(bus)
        answers: dict[str, float] = {}
        tickets: dict[str, float] = {}
        auth_of: dict[str, m.Authorization] = {}
        lock = threading.Lock()
        stop = threading.Event()
        driver_consumer = bus.consumer([CONTROL])

        def on_driver(msg: m.Message, _d: object) -> None:
            now = time.monotonic()
            with lock:
                if isinstance(msg, m.Authorization):
                    answers[msg.request_id] = now
                    auth_of[msg.request_id] = msg
                elif isinstance(msg, m.Ticket):
                    tickets[msg.session_id] = now

        threading.Thread(target=driver_consumer.run, args=(on_driver, stop), daemon=True).start()

        t0 = time.monotonic()
        monitors = Monitors(port, cps)
        while len(monitors.registered) < len(cps) and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        print(f"{len(monitors.registered)} of {len(cps)} monitors registered in "
              f"{time.monotonic() - t0:.2f} s")
        cpu0, wall0 = cpu_seconds(central.pid), time.monotonic()

        sent: dict[str, float] = {}
        for i in range(args.supplies):
            req = m.ChargeRequest(driver_id=f"D-{i}", cp_id=cps[i])
            sent[req.msg_id] = time.monotonic()
            bus.send(REQUESTS, req, req.cp_id)
            time.sleep(0.002)  # 500 drivers arriving over about a second
        bus.flush()
        deadline = time.monotonic() + 30
        while len(answers) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        show("request -> authorization", [answers[k] - v for k, v in sent.items()
                                           if k in answers])
        granted = sum(1 for a in auth_of.values() if a.authorized)
        print(f"authorized {granted} of {len(sent)}")

        time.sleep(args.seconds)  # supplies run: telemetry at 1 Hz each
        cpu1, wall1 = cpu_seconds(central.pid), time.monotonic()
        print(f"central during {args.seconds:.0f} s of {granted} supplies + {len(cps)} "
              f"heartbeats/s: CPU {100 * (cpu1 - cpu0) / (wall1 - wall0):.0f}% of one core, "
              f"RSS {rss_mb(central.pid):.0f} MB; telemetry sent {engines.sent}")

        probes = cps[args.supplies: args.supplies + args.probes]
        show("fault report -> state change printed", [
            out.time_to(lambda cp=cp: monitors.send(cp, m.FaultReport(cp_id=cp, reason="b")),
                        f"{cp} Activado -> Averiado") for cp in probes])
        show("closed monitor -> Desconectado printed", [
            out.time_to(lambda cp=cp: monitors.close(cp), f"{cp} Averiado -> Desconectado")
            for cp in probes])

        ends: dict[str, float] = {}
        for _req_id, auth in list(auth_of.items()):
            if auth.authorized:
                ends[auth.session_id] = time.monotonic()
                bus.send(REQUESTS, m.EndRequest(driver_id=auth.driver_id, cp_id=auth.cp_id,
                                                session_id=auth.session_id), auth.cp_id)
        bus.flush()
        deadline = time.monotonic() + 30
        while len([s for s in ends if s in tickets]) < len(ends) and time.monotonic() < deadline:
            time.sleep(0.05)
        show("end request -> ticket", [tickets[s] - t for s, t in ends.items() if s in tickets])
        print(f"tickets {len([s for s in ends if s in tickets])} of {len(ends)} supplies")
        stop.set()
        engines.stop.set()
        monitors.stop.set()
        bus.close()
    finally:
        central.terminate()
        central.wait(10)


if __name__ == "__main__":
    main()

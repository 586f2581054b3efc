"""The web board under a 1,000-CP network: what `evc web` costs with many browsers watching.

    python -m benchmarks.web [--cps 1000] [--clients 50] [--changes 200] [--seconds 30]
                             [--kafka HOST:PORT] [--no-browser] [--json]

A stand-in central in this process publishes the network's public state on the real
broker, as central does: a `cp_status` for each of ``--cps`` CPs, then ``--changes``
state changes a second (CPs starting and ending supplies, with a session record each on
`central_changelog`) and `central_status` every second. A real `evc web` process follows
it; ``--clients`` event-stream readers (raw HTTP, in threads here) watch `/api/events`
for ``--seconds``. It prints the web process' CPU (% of one core) and RSS over that
window, the events each client received per second (the coalescing: at most 4 whatever
the network does), the bytes per event (after the first whole board, each is a delta of
the rows that changed), and, unless ``--no-browser``, the time until a
real Chromium (Debian's, as the tests use) has drawn all the rows of a fresh page: its
first paint of the whole board. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.procinfo import cpu_seconds, rss_mb
from benchmarks.scale import machine_ms
from evc.bus import open_bus
from evc.net import free_port
from evc.protocol import messages as m
from evc.protocol.topics import CHANGELOG, NETWORK

EVC = [sys.executable, "-m", "evc.cli"]


class Feed:
    """The network's public state, changing ``rate`` times a second."""

    def __init__(self, bus: Any, cps: int, rate: float) -> None:
        self.bus, self.rate = bus, rate
        self.ids = [f"CP-{i:04d}" for i in range(1, cps + 1)]
        self.supplying: dict[str, str] = {}
        self.rng = random.Random(7)
        self.sent = 0

    def status(self, cp: str, state: m.CPState) -> None:
        self.bus.send(NETWORK, m.CPStatus(cp_id=cp, location=f"Calle {cp[-4:]}",
                                          price_eur_kwh=0.35, state=state,
                                          kw=22.0 if state is m.CPState.SUMINISTRANDO else 0),
                      cp)
        self.sent += 1

    def start(self) -> None:
        for cp in self.ids:
            self.status(cp, m.CPState.ACTIVADO)
        self.beat()

    def beat(self) -> None:
        self.bus.send(NETWORK, m.CentralStatus(central="benchmark", started_at=time.time()),
                      "@central")

    def change(self) -> None:
        cp = self.rng.choice(self.ids)
        sid = self.supplying.pop(cp, None)
        now = time.time()
        if sid is None:
            sid = uuid.uuid4().hex
            self.supplying[cp] = sid
            rec = {"session_id": sid, "cp_id": cp, "driver_id": f"D-{self.rng.randrange(999)}",
                   "status": "open", "started_at": now, "consumo_kwh": 0.0,
                   "importe_eur": 0.0, "price_eur_kwh": 0.35}
            self.status(cp, m.CPState.SUMINISTRANDO)
        else:
            rec = {"session_id": sid, "cp_id": cp, "driver_id": "D-1", "status": "closed",
                   "started_at": now - 60, "ended_at": now, "consumo_kwh": 1.5,
                   "importe_eur": 0.53, "price_eur_kwh": 0.35, "reason": "finished"}
            self.status(cp, m.CPState.ACTIVADO)
        self.bus._producer.send(self.bus.topic(CHANGELOG), key=f"sessions/{sid}".encode(),
                                value=json.dumps(rec).encode())

    def run(self, stop: threading.Event) -> None:
        next_beat = time.monotonic()
        gap = 1.0 / self.rate if self.rate > 0 else 1.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                self.beat()
                next_beat = now + 1.0
            if self.rate > 0:
                self.change()
            stop.wait(gap)


class Watcher(threading.Thread):
    """One browser's event stream, read raw: events and bytes."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.events = 0
        self.bytes = 0
        self.counting = False

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(b"GET /api/events HTTP/1.1\r\nHost: bench\r\n\r\n")
            buf = b""
            while not self.stop.is_set():
                try:
                    chunk = s.recv(1 << 20)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buf += chunk
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    if block.startswith((b"event: board", b"event: delta")) and \
                            self.counting:
                        self.events += 1
                        self.bytes += len(block)


def first_paint(url: str, cps: int) -> float | None:
    """Seconds from navigation until a fresh Chromium shows every row; None: no browser."""
    try:
        from tests.browser import chromium
    except ImportError:
        return None
    try:
        with chromium() as driver:
            started = time.monotonic()
            driver.get(url)
            deadline = started + 30
            while time.monotonic() < deadline:
                n = driver.execute_script(
                    "return document.querySelectorAll('#board tbody tr').length")
                if n >= cps:
                    return time.monotonic() - started
                time.sleep(0.02)
    except AssertionError as exc:  # no chromium here
        print(f"no browser: {exc}", file=sys.stderr)
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    speed = machine_ms()
    prefix = f"bweb{uuid.uuid4().hex[:8]}-"
    port = free_port()
    stop = threading.Event()
    with open_bus(args.kafka, prefix=prefix, client_id="bench-web", wait=30,
                  stop=stop) as bus:
        bus.ensure_topics()
        feed = Feed(bus, args.cps, args.changes)
        feed.start()
        web = subprocess.Popen(EVC + ["web", args.kafka, "--listen", f"127.0.0.1:{port}",
                                      "--topic-prefix", prefix],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert web.stderr is not None
            web.stderr.readline()  # "evc web: the board at …"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # it has the whole network
                try:
                    import urllib.request

                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/board",
                                                timeout=5) as res:
                        if len(json.loads(res.read()).get("cps", [])) >= args.cps:
                            break
                except OSError:
                    pass
                time.sleep(0.2)
            paint = None if args.no_browser else first_paint(f"http://127.0.0.1:{port}/",
                                                             args.cps)
            feeder = threading.Thread(target=feed.run, args=(stop,), daemon=True)
            feeder.start()
            watchers = [Watcher(port, stop) for _ in range(args.clients)]
            for w in watchers:
                w.start()
            time.sleep(2.0)  # every stream open and past its first event
            for w in watchers:
                w.counting = True
            cpu0, t0, sent0 = cpu_seconds(web.pid), time.monotonic(), feed.sent
            time.sleep(args.seconds)
            cpu1, t1, sent1 = cpu_seconds(web.pid), time.monotonic(), feed.sent
            for w in watchers:
                w.counting = False
            rss = rss_mb(web.pid)
            elapsed = t1 - t0
            rates = [w.events / elapsed for w in watchers] or [0.0]
            events = sum(w.events for w in watchers)
            return {
                "machine_ms": speed,
                "cps": args.cps, "clients": args.clients, "seconds": round(elapsed, 1),
                "network_changes_per_s": round((sent1 - sent0) / elapsed, 1),
                "web_cpu_percent": round(100 * (cpu1 - cpu0) / elapsed, 1),
                "web_rss_mb": round(rss, 1),
                "events_per_client_per_s": {"min": round(min(rates), 2),
                                            "max": round(max(rates), 2)},
                "kb_per_event": round(sum(w.bytes for w in watchers) / max(events, 1) / 1024, 1),
                "first_paint_s": None if paint is None else round(paint, 3),
            }
        finally:
            stop.set()
            web.terminate()
            try:
                web.wait(5)
            except subprocess.TimeoutExpired:
                web.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--cps", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--changes", type=float, default=200.0,
                        help="network changes a second (supplies starting or ending)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = run(args)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['cps']} CPs, {out['network_changes_per_s']} changes/s, {out['clients']} "
          f"event streams for {out['seconds']} s")
    print(f"  evc web: {out['web_cpu_percent']} % of a core, {out['web_rss_mb']} MB RSS")
    e = out["events_per_client_per_s"]
    print(f"  each stream: {e['min']}-{e['max']} board events/s, {out['kb_per_event']} KB each")
    print(f"  machine speed: {out['machine_ms']} ms for the fixed work (lower is faster)")
    if out["first_paint_s"] is not None:
        print(f"  Chromium, a fresh page: every row drawn after {out['first_paint_s']} s")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()

"""A day at a workplace car park: a real central shares one transformer among 54 CPs.

    python -m benchmarks.site [--cps 54] [--limit 150] [--speed 600] [--json]
                              [--kafka HOST:PORT] [--seed 7]

The site mirrors Caltech's ACN garage as its papers describe it (Lee, Li, Low: "ACN-Data:
Analysis and Applications of an Open EV Charging Dataset", e-Energy 2019; and
"ACN-Sim", 2021): 54 charge points of up to 22 kW behind one transformer (150 kW here).
The inputs, drawn once from a seeded generator so every configuration sees the same day:

- arrivals on a weekday curve: 85 % around the morning peak, Normal(8.75 h, 1.0 h)
  clipped to 6-13 h (ACN-Data: most workplace arrivals between 7 and 10 am, peak 8-9 am),
  15 % spread over 10-17 h (visitors);
- stays: log-normal, median 6.5 h for the morning arrivals (ACN-Data: a median sojourn
  of about 6-7 h on weekdays), median 2 h for the others, sigma 0.5; an EV keeps its CP
  until it leaves, charged or not;
- energy asked: log-normal, median 9 kWh, sigma 0.6 (ACN-Data: about 10 kWh per session
  on average), never more than 22 kW x the stay;
- 80 sessions in the day (the garage serves 50-100 on a weekday).

It runs a real `evc central` (open level, `--sites`, `--speed`) against the real broker.
The CPs are stand-ins in this process speaking the real protocols: a monitor per CP on
TCP (registration with its 22 kW, heartbeats) and an engine per CP on Kafka (obeys
`start_supply.kw` / `set_power`, a reading every real second of kW x speed / 3600 kWh,
naming the power order it obeys). Each EV's driver asks for a charge on arrival, with
`max_kw` 22, and ends it once it has its energy or at its departure. It prints, for "no
limit", "a limit with equal shares" (`--min-kw` 0.1) and "a limit with equal shares and a
minimum" (4.2 kW): the site's peak power, the energy delivered and the share of the
demand met, and how many drivers left with less than they wanted. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evc.bus import open_bus
from evc.net import free_port
from evc.protocol import messages as m
from evc.protocol.framing import FrameDecoder, encode_frame
from evc.protocol.topics import CONTROL, REQUESTS, TELEMETRY

EVC = [sys.executable, "-m", "evc.cli"]
DAY_START, DAY_END = 6.0, 21.0  # hours simulated
MAX_KW = 22.0


@dataclass
class Visit:
    arrive: float  # hour of the day
    leave: float
    kwh: float  # energy asked
    cp: str = ""
    session: str = ""
    got: float = 0.0
    done: bool = False


def weekday(n: int, seed: int) -> list[Visit]:
    rng = random.Random(seed)
    visits = []
    for _ in range(n):
        if rng.random() < 0.85:
            arrive = min(13.0, max(6.0, rng.gauss(8.75, 1.0)))
            stay = rng.lognormvariate(math.log(6.5), 0.5)
        else:
            arrive = rng.uniform(10.0, 17.0)
            stay = rng.lognormvariate(math.log(2.0), 0.5)
        leave = min(DAY_END, arrive + stay)
        kwh = min(rng.lognormvariate(math.log(9.0), 0.6), MAX_KW * (leave - arrive))
        visits.append(Visit(arrive, leave, round(kwh, 3)))
    return sorted(visits, key=lambda v: v.arrive)


@dataclass
class Engine:
    cp: str
    session: str = ""
    driver: str = ""
    share: float | None = None
    order: str = ""
    kwh: float = 0.0


@dataclass
class Run:
    peak_kw: float = 0.0
    over_limit_readings: int = 0
    loads: list[float] = field(default_factory=list)


def run_day(kafka: str, cps: int, limit: float | None, min_kw: float, speed: float,
            visits: list[Visit]) -> dict[str, Any]:
    prefix = f"site{uuid.uuid4().hex[:8]}-"
    tmp = Path(tempfile.mkdtemp(prefix="evc-site-"))
    ids = [f"CP-{i:02d}" for i in range(1, cps + 1)]
    (tmp / "cps.csv").write_text("".join(f"{cp},Garage,0.30,ACN\n" for cp in ids))
    (tmp / "sites.csv").write_text(f"ACN,{'none' if limit is None else limit}\n")
    port = free_port()
    central = subprocess.Popen(
        EVC + ["central", str(port), kafka, str(tmp / "central.json"), "--listen-host",
               "127.0.0.1", "--cps", str(tmp / "cps.csv"), "--sites", str(tmp / "sites.csv"),
               "--security", "open", "--speed", str(speed), "--min-kw", str(min_kw),
               "--final-timeout", "5",
               "--max-supply-seconds", "0", "--topic-prefix", prefix, "--display", "plain",
               "--log-file", str(tmp / "central.log")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert central.stdout is not None
    for line in central.stdout:
        if "central ready" in line:
            break
    threading.Thread(target=lambda: [None for _ in central.stdout], daemon=True).start()
    stop = threading.Event()
    bus = open_bus(kafka, prefix=prefix, client_id="evc-site-bench")
    engines = {cp: Engine(cp) for cp in ids}
    lock = threading.Lock()
    sel = selectors.DefaultSelector()
    socks = []
    for cp in ids:  # a monitor per CP: registered with the engine's maximum
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(encode_frame(m.Register(cp_id=cp, location="Garage",
                                             max_kw=MAX_KW).to_wire()))
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, FrameDecoder())
        socks.append((cp, sock))

    def monitors() -> None:
        next_beat = 0.0
        while not stop.is_set():
            for key, _ in sel.select(0.2):
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                key.data.feed(data)
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + 1.0
                for cp, sock in socks:
                    try:
                        sock.sendall(encode_frame(m.Heartbeat(cp_id=cp).to_wire()))
                    except (BlockingIOError, OSError):
                        pass

    answers: dict[str, m.Authorization] = {}
    tickets: dict[str, m.Ticket] = {}

    def on_control(msg: m.Message, _delivery: Any) -> None:
        with lock:
            match msg:
                case m.StartSupply() if msg.cp_id in engines:
                    e = engines[msg.cp_id]
                    e.session, e.driver, e.share, e.order, e.kwh = (
                        msg.session_id, msg.driver_id, msg.kw, msg.msg_id, 0.0)
                case m.SetPower() if msg.cp_id in engines:
                    e = engines[msg.cp_id]
                    if e.session == msg.session_id:
                        e.share, e.order = msg.kw, msg.msg_id
                case m.EndSupply() if msg.cp_id in engines:
                    e = engines[msg.cp_id]
                    if e.session == msg.session_id:
                        bus.send(TELEMETRY, m.Telemetry(
                            cp_id=e.cp, driver_id=e.driver, consumo_kwh=e.kwh,
                            importe_eur=round(e.kwh * 0.3, 2), session_id=e.session,
                            final=True, reason=str(msg.reason), kw=0.0), e.cp)
                        e.session = ""
                case m.Authorization():
                    answers[msg.request_id] = msg
                case m.Ticket():
                    tickets[msg.session_id] = msg
                case _:
                    pass

    consumer = bus.consumer([CONTROL])
    threading.Thread(target=monitors, daemon=True).start()
    threading.Thread(target=consumer.run, args=(on_control, stop), daemon=True).start()
    time.sleep(2.0)  # registrations in
    run = Run()
    t0 = time.monotonic()
    hours = lambda: DAY_START + (time.monotonic() - t0) * speed / 3600  # noqa: E731
    pending = list(visits)
    active: dict[str, Visit] = {}  # request id / session -> visit
    requested: dict[str, Visit] = {}
    free = list(ids)
    next_tick = time.monotonic()
    while hours() < DAY_END:
        now_h = hours()
        while pending and pending[0].arrive <= now_h:  # arrivals
            v = pending.pop(0)
            if not free:
                continue  # no CP free: it leaves with nothing (counted below)
            v.cp = free.pop(0)
            req = m.ChargeRequest(driver_id=f"EV-{len(requested):03d}", cp_id=v.cp,
                                  max_kw=MAX_KW)
            requested[req.msg_id] = v
            bus.send(REQUESTS, req, v.cp)
        with lock:
            for rid, v in list(requested.items()):
                a = answers.pop(rid, None)
                if a is not None:
                    if a.authorized:
                        v.session = a.session_id
                        active[a.session_id] = v
                    else:
                        free.append(v.cp)
            load = 0.0
            for e in engines.values():  # each real second: a reading per supply
                if not e.session:
                    continue
                kw = MAX_KW if e.share is None else max(0.0, min(MAX_KW, e.share))
                load += kw
                e.kwh = round(e.kwh + kw * speed / 3600, 4)
                bus.send(TELEMETRY, m.Telemetry(
                    cp_id=e.cp, driver_id=e.driver, consumo_kwh=e.kwh,
                    importe_eur=round(e.kwh * 0.3, 2), session_id=e.session, kw=kw,
                    power_order=e.order), e.cp)
                v = active.get(e.session)
                if v is not None:
                    v.got = e.kwh
            run.peak_kw = max(run.peak_kw, load)
            run.loads.append(load)
            if limit is not None and load > limit + 0.01:
                run.over_limit_readings += 1
            for sid, v in list(active.items()):  # satisfied, or time to go
                if not v.done and (v.got >= v.kwh or now_h >= v.leave):
                    v.done = True
                    e = engines[v.cp]
                    bus.send(REQUESTS, m.EndRequest(driver_id=e.driver, cp_id=v.cp,
                                                    session_id=sid), v.cp)
            for sid, v in list(active.items()):  # the EV stays parked until it leaves
                if sid in tickets and now_h >= v.leave:
                    del active[sid]
                    free.append(v.cp)
        next_tick += 1.0
        time.sleep(max(0.0, next_tick - time.monotonic()))
    stop.set()
    central.terminate()
    central.wait(10)
    bus.close()
    asked = sum(v.kwh for v in visits)
    got = sum(min(v.got, v.kwh) for v in visits)
    short = sum(1 for v in visits if v.got + 0.05 < v.kwh)
    return {"limit_kw": limit, "min_kw": min_kw, "peak_kw": round(run.peak_kw, 2),
            "readings_over_limit": run.over_limit_readings,
            "energy_asked_kwh": round(asked, 1), "energy_delivered_kwh": round(got, 1),
            "demand_met_pct": round(100 * got / asked, 1) if asked else 100.0,
            "drivers": len(visits), "left_short": short,
            "no_cp_free": sum(1 for v in visits if not v.cp)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--cps", type=int, default=54)
    parser.add_argument("--limit", type=float, default=150.0)
    parser.add_argument("--speed", type=float, default=600.0)
    parser.add_argument("--sessions", type=int, default=80)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    visits = weekday(args.sessions, args.seed)
    results = {}
    for name, limit, min_kw in (("no limit", None, 4.2),
                                ("limit, equal shares", args.limit, 0.1),
                                ("limit, equal shares, minimum 4.2 kW", args.limit, 4.2)):
        day = [Visit(v.arrive, v.leave, v.kwh) for v in visits]
        results[name] = run_day(args.kafka, args.cps, limit, min_kw, args.speed, day)
        r = results[name]
        print(f"{name:38s} peak {r['peak_kw']:7.1f} kW  over-limit readings "
              f"{r['readings_over_limit']}  delivered {r['energy_delivered_kwh']:7.1f} of "
              f"{r['energy_asked_kwh']:.1f} kWh ({r['demand_met_pct']:.1f} %)  left short "
              f"{r['left_short']}/{r['drivers']}  no CP free {r['no_cp_free']}", flush=True)
    if args.json:
        print(json.dumps({"cps": args.cps, "speed": args.speed, "results": results}))


if __name__ == "__main__":
    main()

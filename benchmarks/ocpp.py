"""The OCPP gateway under 1,000 chargers: what `evc ocpp` costs, and how long orders and
tickets take through it.

    python -m benchmarks.ocpp [--chargers 1000] [--seconds 20] [--kafka HOST:PORT]
                              [--no-validate] [--json]

Runs a real `evc central` (``--chargers`` CPs and as many drivers in its registry, at the
authenticated level) and a real `evc ocpp` gateway on the real broker. The chargers are a
light load generator in this process: one asyncio WebSocket client each, speaking
OCPP-J 1.6 with HTTP Basic passwords (their CPs' own): BootNotification, then whatever
the gateway asks answered Accepted. Then:

1. every charger gets a driver's request (signed by the driver, 500 a second), and the
   time from the request to the RemoteStartTransaction arriving at the charger is
   measured; the charger starts its transaction;
2. all of them send MeterValues (energy and power) every second for ``--seconds``: the
   gateway's CPU (% of one core) and RSS are read over that window, central's CPU too;
3. every charger stops its transaction (StopTransaction, EVDisconnected, 500 a second),
   and the time until the driver's ticket is on control_topic is measured.

Prints the figures (with the machine-speed calibration of benchmarks.scale) and whether
schema validation was on; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from benchmarks.procinfo import cpu_seconds, rss_mb
from benchmarks.scale import machine_ms, secret, show, started, summary
from evc.bus import KafkaBus
from evc.net import free_port
from evc.protocol import auth
from evc.protocol import messages as m
from evc.protocol.topics import CONTROL, REQUESTS

EVC = [sys.executable, "-m", "evc.cli"]


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Charger:
    """One light OCPP-J 1.6 charger."""

    def __init__(self, cp_id: str, url: str, password: str, bench: Bench) -> None:
        self.cp_id, self.url, self.password, self.bench = cp_id, url, password, bench
        self.ws: ClientConnection | None = None
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.tx: int | None = None
        self.wh = 0
        self.driver = ""
        self.booted = asyncio.Event()
        self.n = 0

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        assert self.ws is not None
        self.n += 1
        uid = f"{self.cp_id}-{self.n}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[uid] = future
        await self.ws.send(json.dumps([2, uid, action, payload]))
        try:
            return await asyncio.wait_for(future, 60)
        finally:
            self.pending.pop(uid, None)

    async def run(self) -> None:
        token = base64.b64encode(f"{self.cp_id}:{self.password}".encode()).decode()
        for _ in range(30):
            try:
                async with connect(self.url, subprotocols=["ocpp1.6"], open_timeout=30,
                                   additional_headers={"Authorization": f"Basic {token}"},
                                   ping_interval=None, compression=None) as ws:
                    self.ws = ws
                    reader = asyncio.create_task(self.read())
                    while True:
                        answer = await self.call("BootNotification", {
                            "chargePointVendor": "bench", "chargePointModel": "light"})
                        if answer.get("status") == "Accepted":
                            break
                        await asyncio.sleep(1)
                    await self.call("StatusNotification", {"connectorId": 1,
                                                           "errorCode": "NoError",
                                                           "status": "Available"})
                    self.booted.set()
                    await reader
                    return
            except (OSError, WebSocketException, TimeoutError):
                await asyncio.sleep(1)

    async def read(self) -> None:
        assert self.ws is not None
        async for text in self.ws:
            frame = json.loads(text)
            if frame[0] == 2:
                asyncio.get_running_loop().create_task(self.on_call(frame[1], frame[2],
                                                                    frame[3]))
            else:
                future = self.pending.get(frame[1])
                if future is not None and not future.done():
                    future.set_result(frame[2] if frame[0] == 3 else {})

    async def on_call(self, uid: str, action: str, payload: dict[str, Any]) -> None:
        assert self.ws is not None
        if action == "RemoteStartTransaction":
            self.bench.remote_at[self.cp_id] = time.time()
            self.driver = payload["idTag"]
        answer: dict[str, Any] = {"status": "Accepted"}
        if action == "GetConfiguration":
            answer = {"configurationKey": []}
        await self.ws.send(json.dumps([3, uid, answer]))
        if action == "RemoteStartTransaction":
            result = await self.call("StartTransaction", {
                "connectorId": 1, "idTag": self.driver, "meterStart": self.wh,
                "timestamp": now_iso()})
            self.tx = result["transactionId"]

    async def meter(self) -> None:
        if self.tx is None:
            return
        self.wh += 6  # 22 kW for a second
        await self.call("MeterValues", {"connectorId": 1, "transactionId": self.tx,
                                        "meterValue": [{"timestamp": now_iso(),
                                                        "sampledValue": [
                                                            {"value": str(self.wh)},
                                                            {"value": "22000", "unit": "W",
                                                             "measurand":
                                                                 "Power.Active.Import"}]}]})

    async def stop(self) -> None:
        if self.tx is None:
            return
        self.bench.stop_at[self.driver] = time.time()
        tx, self.tx = self.tx, None
        await self.call("StopTransaction", {"transactionId": tx, "meterStop": self.wh,
                                            "timestamp": now_iso(),
                                            "reason": "EVDisconnected"})


class Bench:
    def __init__(self) -> None:
        self.remote_at: dict[str, float] = {}
        self.stop_at: dict[str, float] = {}
        self.tickets: dict[str, float] = {}


async def load(args: argparse.Namespace, bench: Bench, port: int, creds: Path, bus: KafkaBus,
               gateway: subprocess.Popen[bytes], central: subprocess.Popen[bytes]
               ) -> dict[str, Any]:
    cps = [f"CP-{i:04d}" for i in range(args.chargers)]
    drivers = {cp: f"D-{i:04d}" for i, cp in enumerate(cps)}
    chargers = [Charger(cp, f"ws://127.0.0.1:{port}/{cp}",
                        auth.ocpp_password(secret(creds, cp), cp), bench) for cp in cps]
    figures: dict[str, Any] = {}
    t0 = time.monotonic()
    tasks = [asyncio.create_task(c.run()) for c in chargers]
    await asyncio.wait_for(asyncio.gather(*(c.booted.wait() for c in chargers)), 600)
    figures["boot_s"] = round(time.monotonic() - t0, 1)
    print(f"{len(chargers)} chargers booted and registered in {figures['boot_s']} s",
          flush=True)
    requested: dict[str, float] = {}
    keys = {d: auth.driver_key(secret(creds, d)) for d in drivers.values()}
    for i, cp in enumerate(cps):
        driver = drivers[cp]
        req = auth.sign(m.ChargeRequest(driver_id=driver, cp_id=cp), keys[driver])
        requested[cp] = time.time()
        bus.send(REQUESTS, req, cp)
        if i % 50 == 49:
            bus.flush()
            await asyncio.sleep(0.1)  # 500 a second
    bus.flush()
    deadline = time.monotonic() + 120
    while len(bench.remote_at) < len(cps) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    while sum(c.tx is not None for c in chargers) < len(bench.remote_at) and \
            time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    figures["request_to_remote_start"] = summary(
        [bench.remote_at[cp] - requested[cp] for cp in bench.remote_at])
    # the steady part: MeterValues every second from every charger
    cpu_g, cpu_c, t1 = cpu_seconds(gateway.pid), cpu_seconds(central.pid), time.monotonic()
    sent = 0
    while time.monotonic() - t1 < args.seconds:
        tick = time.monotonic()
        await asyncio.gather(*(c.meter() for c in chargers))
        sent += sum(c.tx is not None for c in chargers)
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    elapsed = time.monotonic() - t1
    figures["meter_values_per_s"] = round(sent / elapsed)
    figures["gateway_cpu_pct"] = round(100 * (cpu_seconds(gateway.pid) - cpu_g) / elapsed, 1)
    figures["central_cpu_pct"] = round(100 * (cpu_seconds(central.pid) - cpu_c) / elapsed, 1)
    figures["gateway_rss_mb"] = round(rss_mb(gateway.pid), 1)
    # the stops
    for i, c in enumerate(chargers):
        await c.stop()
        if i % 50 == 49:
            await asyncio.sleep(0.1)
    deadline = time.monotonic() + 120
    while len(bench.tickets) < len(bench.stop_at) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    figures["stop_to_ticket"] = summary(
        [bench.tickets[d] - bench.stop_at[d] for d in bench.stop_at if d in bench.tickets])
    for task in tasks:
        task.cancel()
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    speed = machine_ms()
    prefix = f"bocpp{uuid.uuid4().hex[:6]}-"
    tmp = Path(tempfile.mkdtemp(prefix="evc-ocpp-"))
    creds = tmp / "credentials"
    cps = [f"CP-{i:04d}" for i in range(args.chargers)]
    (tmp / "cps.csv").write_text("".join(f"{cp},bench,0.30\n" for cp in cps))
    (tmp / "drivers.txt").write_text("".join(f"D-{i:04d}\n" for i in range(args.chargers)))
    env = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1", EVC_CREDENTIALS_DIR=str(creds))
    central_port, gateway_port = free_port(), free_port()
    central = subprocess.Popen(
        EVC + ["central", str(central_port), args.kafka, str(tmp / "central.json"), "--cps",
               str(tmp / "cps.csv"), "--drivers", str(tmp / "drivers.txt"), "--topic-prefix",
               prefix, "--display", "plain", "--listen-host", "127.0.0.1", "--log-file",
               str(tmp / "central.log")],
        stdout=open(tmp / "central.out", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    gateway = None
    bench = Bench()
    stop = threading.Event()
    try:
        started(central, tmp / "central.out", "central ready", "central")
        gateway = subprocess.Popen(
            EVC + ["ocpp", args.kafka, f"127.0.0.1:{central_port}", "--listen",
                   f"127.0.0.1:{gateway_port}", "--state-dir", str(tmp / "gw"),
                   "--topic-prefix", prefix, *(["--no-validate"] if args.no_validate else [])],
            stdout=open(tmp / "gateway.out", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        started(gateway, tmp / "gateway.out", "OCPP 1.6J gateway on", "the gateway")
        bus = KafkaBus(args.kafka, prefix=prefix, client_id="bench-ocpp")
        consumer = bus.consumer([CONTROL])

        def on_control(msg: m.Message, _d: object) -> None:
            if isinstance(msg, m.Ticket):
                bench.tickets.setdefault(msg.driver_id, time.time())

        reader = threading.Thread(target=consumer.run, args=(on_control, stop), daemon=True)
        reader.start()
        consumer.caught_up.wait(30)
        figures = asyncio.run(load(args, bench, gateway_port, creds, bus, gateway, central))
        figures = {"machine_ms": speed, "chargers": args.chargers,
                   "validation": not args.no_validate, **figures}
        bus.close()
        return figures
    finally:
        stop.set()
        for proc in (gateway, central):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chargers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--kafka", default=os.environ.get("EVC_KAFKA", "127.0.0.1:9092"))
    parser.add_argument("--no-validate", action="store_true",
                        help="run the gateway with --no-validate (no JSON schema checks)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args)
    print(f"machine speed {figures['machine_ms']} ms; {figures['chargers']} chargers, schema "
          f"validation {'on' if figures['validation'] else 'off'}")
    print(f"  boot and registration of all         {figures['boot_s']} s")
    show("driver request -> RemoteStartTransaction", figures["request_to_remote_start"])
    print(f"  MeterValues a second                 {figures['meter_values_per_s']}")
    print(f"  gateway CPU                          {figures['gateway_cpu_pct']} % of a core")
    print(f"  gateway RSS                          {figures['gateway_rss_mb']} MB")
    print(f"  central CPU meanwhile                {figures['central_cpu_pct']} % of a core")
    show("StopTransaction -> ticket", figures["stop_to_ticket"])
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`evc ocpp-charger URL` — a simulated OCPP 1.6J charger, for labs, demos and tests.

It is built on the ``ocpp`` package's v16 ``ChargePoint`` (mobilityhouse) over a real
WebSocket, as a charger of another maker would connect: BootNotification, a
StatusNotification per change, Heartbeat at the interval it is told, remote and local
(card) starts, MeterValues (energy register in Wh and power in W) at the
``MeterValueSampleInterval`` it is set to, StopTransaction with its meterStop and reason.
It obeys RemoteStart/StopTransaction, ChangeAvailability, ChangeConfiguration,
GetConfiguration, SetChargingProfile/ClearChargingProfile (it draws at most the limit),
Reset and TriggerMessage. Like real chargers, it queues its transaction messages while
the connection is down and sends them, in order, when it is back; it boots only once (and
again after a Reset).

Keys (a terminal) or lines (a pipe): ``c`` / ``card ID`` present a card, ``s`` / ``stop``
stop at the charger (Local), ``u`` / ``unplug`` (EVDisconnected), ``f`` / ``fault``,
``r`` / ``recover``, ``d`` / ``drop`` the connection for a while, ``q`` / ``quit``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from evc.console import KeyReader, pump_keys, say
from evc.lifecycle import install_stop_signals
from evc.logs import setup_logging
from evc.ocpp.model import now_iso
from evc.protocol.codes import DEFAULT_SPEED

log = logging.getLogger("evc.ocpp.charger")


@dataclass
class Meter:
    """What survives the charger's connections (and, with --state, its process)."""

    wh: float = 0.0
    tx_id: int | None = None
    id_tag: str = ""
    status: str = "Available"
    faulted: bool = False
    available: bool = True
    limit_kw: float | None = None
    interval: float = 60.0  # MeterValueSampleInterval (the central sets it)
    heartbeat: float = 60.0
    booted: bool = False
    config: dict[str, str] = field(default_factory=dict)
    queued: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # action, payload

    def save(self, path: Path | None) -> None:
        if path is not None:
            path.write_text(json.dumps(self.__dict__), encoding="utf-8")

    @classmethod
    def load(cls, path: Path | None) -> Meter:
        if path is None or not path.exists():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        data["queued"] = [tuple(q) for q in data.get("queued", [])]
        data["booted"] = False  # a process that starts is a charger that boots
        return cls(**data)


class Sim(ChargePoint):  # type: ignore[misc]
    """One connection of the simulated charger (its state is the shared ``Meter``)."""

    def __init__(self, cp_id: str, ws: ClientConnection, charger: Charger) -> None:
        super().__init__(cp_id, ws, response_timeout=15)
        self.charger = charger

    @on(Action.remote_start_transaction)  # type: ignore[untyped-decorator]
    def on_remote_start(self, id_tag: str, connector_id: int = 1, **_: Any) -> Any:
        m = self.charger.meter
        if m.tx_id is not None or m.faulted or not m.available:
            return call_result.RemoteStartTransaction(status="Rejected")
        self.charger.later(self.charger.start(id_tag, remote=True))
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.remote_stop_transaction)  # type: ignore[untyped-decorator]
    def on_remote_stop(self, transaction_id: int) -> Any:
        if self.charger.meter.tx_id != transaction_id:
            return call_result.RemoteStopTransaction(status="Rejected")
        self.charger.later(self.charger.stop("Remote"))
        return call_result.RemoteStopTransaction(status="Accepted")

    @on(Action.change_availability)  # type: ignore[untyped-decorator]
    def on_availability(self, connector_id: int, **fields: str) -> Any:
        m = self.charger.meter
        m.available = fields["type"] == "Operative"
        if m.tx_id is not None and not m.available:
            return call_result.ChangeAvailability(status="Scheduled")
        self.charger.later(self.charger.set_status(
            "Available" if m.available and not m.faulted else
            "Faulted" if m.faulted else "Unavailable"))
        return call_result.ChangeAvailability(status="Accepted")

    @on(Action.change_configuration)  # type: ignore[untyped-decorator]
    def on_change_configuration(self, key: str, value: str) -> Any:
        m = self.charger.meter
        if key == "MeterValueSampleInterval":
            try:
                m.interval = max(0.2, float(value))
            except ValueError:
                return call_result.ChangeConfiguration(status="Rejected")
        m.config[key] = value
        return call_result.ChangeConfiguration(status="Accepted")

    @on(Action.get_configuration)  # type: ignore[untyped-decorator]
    def on_get_configuration(self, key: list[str] | None = None) -> Any:
        m = self.charger.meter
        known = {"MeterValueSampleInterval": f"{m.interval:g}",
                 "HeartbeatInterval": f"{m.heartbeat:g}", **m.config}
        asked = key or list(known)
        return call_result.GetConfiguration(
            configuration_key=[{"key": k, "readonly": False, "value": known[k]}
                               for k in asked if k in known],
            unknown_key=[k for k in asked if k not in known])

    @on(Action.set_charging_profile)  # type: ignore[untyped-decorator]
    def on_set_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]
                       ) -> Any:
        schedule = cs_charging_profiles["charging_schedule"]
        limit = float(schedule["charging_schedule_period"][0]["limit"])
        unit = schedule["charging_rate_unit"]
        self.charger.meter.limit_kw = limit / 1000 if unit == "W" else limit * 230 * 3 / 1000
        return call_result.SetChargingProfile(status="Accepted")

    @on(Action.clear_charging_profile)  # type: ignore[untyped-decorator]
    def on_clear_profile(self, **_: Any) -> Any:
        self.charger.meter.limit_kw = None
        return call_result.ClearChargingProfile(status="Accepted")

    @on(Action.reset)  # type: ignore[untyped-decorator]
    def on_reset(self, **fields: str) -> Any:
        self.charger.later(self.charger.reset(fields["type"]))
        return call_result.Reset(status="Accepted")

    @on(Action.trigger_message)  # type: ignore[untyped-decorator]
    def on_trigger(self, requested_message: str, connector_id: int | None = None
                   ) -> Any:
        if requested_message not in ("StatusNotification", "Heartbeat", "MeterValues",
                                     "BootNotification"):
            return call_result.TriggerMessage(status="NotImplemented")
        self.charger.later(self.charger.trigger(requested_message))
        return call_result.TriggerMessage(status="Accepted")


class Charger:
    """The simulated charger: its meter, its connection (again and again), its keys."""

    def __init__(self, url: str, cp_id: str, *, password: str | None, max_kw: float,
                 speed: float, card: str, state: Path | None,
                 tls: ssl.SSLContext | None) -> None:
        self.url, self.cp_id, self.password = url, cp_id, password
        self.max_kw, self.speed, self.card = max_kw, speed, card
        self.state_file = state
        self.meter = Meter.load(state)
        self.tls = tls
        self.cp: Sim | None = None
        self.ws: ClientConnection | None = None
        self.online = asyncio.Event()
        self.down_until = 0.0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stopping = False

    def later(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def kw(self) -> float:
        limit = self.meter.limit_kw
        return self.max_kw if limit is None else max(0.0, min(self.max_kw, limit))

    # ------------------------------------------------------------------ sending
    async def send(self, payload: Any, *, queue: bool = False) -> Any:
        """A CALL now; a transaction message is queued while offline (sent on return)."""
        if self.cp is None or not self.online.is_set():
            if queue:
                self.meter.queued.append((type(payload).__name__, payload.__dict__))
                self.meter.save(self.state_file)
            return None
        try:
            return await self.cp.call(payload)
        except (WebSocketException, TimeoutError, OSError) as exc:
            log.info("%s: %s not sent: %s", self.cp_id, type(payload).__name__, exc)
            if queue:
                self.meter.queued.append((type(payload).__name__, payload.__dict__))
                self.meter.save(self.state_file)
            return None

    async def set_status(self, status: str, error: str = "NoError", info: str = "") -> None:
        self.meter.status = status
        await self.send(call.StatusNotification(connector_id=1, error_code=error,
                                                status=status, info=info or None,
                                                timestamp=now_iso()))

    # ------------------------------------------------------------------ transactions
    async def start(self, id_tag: str, *, remote: bool) -> None:
        m = self.meter
        if m.tx_id is not None:
            say(f"{self.cp_id}: busy with transaction {m.tx_id}")
            return
        if not remote:
            answer = await self.send(call.Authorize(id_tag=id_tag))
            status = answer.id_tag_info["status"] if answer is not None else "no answer"
            if status != "Accepted":
                say(f"{self.cp_id}: card {id_tag} refused ({status})")
                return
        await self.set_status("Preparing")
        answer = await self.send(call.StartTransaction(
            connector_id=1, id_tag=id_tag, meter_start=int(m.wh), timestamp=now_iso()))
        if answer is None:
            await self.set_status("Available")
            return
        if answer.id_tag_info["status"] != "Accepted":
            say(f"{self.cp_id}: central refused {id_tag}: {answer.id_tag_info['status']}")
            await self.send(call.StopTransaction(
                meter_stop=int(m.wh), timestamp=now_iso(),
                transaction_id=answer.transaction_id, reason="DeAuthorized"), queue=True)
            await self.set_status("Available")
            return
        m.tx_id, m.id_tag, m.limit_kw = answer.transaction_id, id_tag, m.limit_kw
        m.save(self.state_file)
        say(f"{self.cp_id}: transaction {m.tx_id} for {id_tag} started at {int(m.wh)} Wh")
        await self.set_status("Charging")

    async def stop(self, reason: str) -> None:
        m = self.meter
        if m.tx_id is None:
            return
        tx_id, m.tx_id = m.tx_id, None
        m.limit_kw = None
        m.save(self.state_file)
        meter_stop = int(m.wh)
        await self.send(call.StopTransaction(meter_stop=meter_stop, timestamp=now_iso(),
                                             transaction_id=tx_id, reason=reason,
                                             id_tag=m.id_tag or None), queue=True)
        say(f"{self.cp_id}: transaction {tx_id} stopped ({reason}) at {meter_stop} Wh")
        await self.set_status("Faulted" if m.faulted else "Finishing" if reason in (
            "Remote", "Local") else "Available", "OtherError" if m.faulted else "NoError")
        if not m.faulted and reason in ("Remote", "Local"):
            await self.set_status("Available")

    async def meter_loop(self) -> None:
        last = time.monotonic()
        next_sample = last
        while not self.stopping:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            m = self.meter
            if m.tx_id is not None:
                m.wh += self.kw * 1000 * self.speed / 3600 * (now - last)
            last = now
            if m.tx_id is not None and now >= next_sample:
                next_sample = now + m.interval
                m.save(self.state_file)
                await self.send(call.MeterValues(connector_id=1, transaction_id=m.tx_id,
                                                 meter_value=[self._sample("Sample.Periodic")]),
                                queue=True)

    def _sample(self, context: str) -> dict[str, Any]:
        return {"timestamp": now_iso(), "sampledValue": [
            {"value": f"{int(self.meter.wh)}", "context": context,
             "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": f"{self.kw * 1000 if self.meter.tx_id else 0:.0f}", "context": context,
             "measurand": "Power.Active.Import", "unit": "W"}]}

    async def reset(self, kind: str) -> None:
        await self.stop(f"{kind}Reset")
        self.meter.booted = False
        self.drop(1.0)

    async def trigger(self, what: str) -> None:
        if what == "StatusNotification":
            await self.set_status(self.meter.status)
        elif what == "Heartbeat":
            await self.send(call.Heartbeat())
        elif what == "MeterValues":
            await self.send(call.MeterValues(connector_id=1, transaction_id=self.meter.tx_id,
                                             meter_value=[self._sample("Trigger")]))
        else:
            await self.boot()

    async def boot(self) -> bool:
        answer = await self.send(call.BootNotification(
            charge_point_model="evc-sim", charge_point_vendor="evc"))
        if answer is None:
            return False
        self.meter.heartbeat = float(answer.interval)
        if answer.status != "Accepted":
            say(f"{self.cp_id}: boot {answer.status}; again in {answer.interval} s")
            return False
        self.meter.booted = True
        say(f"{self.cp_id}: booted (heartbeat every {answer.interval} s)")
        return True

    # ------------------------------------------------------------------ keys
    async def key(self, text: str) -> None:
        words = text.split()
        if not words:
            return
        verb, arg = words[0].lower(), words[1] if len(words) > 1 else self.card
        if verb in ("c", "card"):
            self.later(self.start(arg, remote=False))
        elif verb in ("s", "stop"):
            await self.stop("Local")
        elif verb in ("u", "unplug"):
            await self.stop("EVDisconnected")
        elif verb in ("f", "fault"):
            self.meter.faulted = True
            await self.set_status("Faulted", "OtherError", "fault simulated")
            await self.stop("Other")
        elif verb in ("r", "recover"):
            self.meter.faulted = False
            await self.set_status("Available")
        elif verb in ("d", "drop"):
            self.drop(float(words[1]) if len(words) > 1 else 5.0)
        elif verb in ("q", "quit"):
            self.stopping = True
        else:
            say(f"unknown key {text!r}: c card, s stop, u unplug, f fault, r recover, d drop, "
                "q quit")

    def drop(self, seconds: float) -> None:
        """The connection lost for a while (the charger queues meanwhile)."""
        self.down_until = time.monotonic() + seconds
        if self.ws is not None:
            self.later(self.ws.close())

    # ------------------------------------------------------------------ connection
    async def run(self, stop: threading.Event) -> None:
        self.later(self.meter_loop())
        headers = {}
        if self.password is not None:
            token = base64.b64encode(f"{self.cp_id}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        backoff = 1.0
        while not stop.is_set() and not self.stopping:
            wait = self.down_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(min(wait, 0.2))
                continue
            try:
                async with connect(self.url, subprotocols=[Subprotocol("ocpp1.6")],
                                   additional_headers=headers, ssl=self.tls,
                                   open_timeout=5, ping_interval=10) as ws:
                    backoff = 1.0
                    await self._serve(ws, stop)
            except InvalidStatus as exc:
                say(f"{self.cp_id}: the central system refused the connection "
                    f"(HTTP {exc.response.status_code}): "
                    f"{exc.response.body.decode(errors='replace').strip()[:120]}")
                if exc.response.status_code in (401, 403, 404):
                    self.stopping = True
                    raise SystemExit(1) from None
            except (OSError, WebSocketException, TimeoutError) as exc:
                log.info("%s: connection: %s", self.cp_id, exc)
            self.online.clear()
            self.cp = None
            if not stop.is_set() and not self.stopping:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 3.0)  # a lab charger comes back soon
        for task in list(self.tasks):
            task.cancel()

    async def _serve(self, ws: ClientConnection, stop: threading.Event) -> None:
        self.cp = Sim(self.cp_id, ws, self)
        self.ws = ws
        reader = asyncio.get_running_loop().create_task(self.cp.start())
        self.online.set()
        try:
            while not self.meter.booted and not reader.done() and not stop.is_set():
                if await self.boot():
                    await self.set_status("Faulted" if self.meter.faulted
                                          else self.meter.status)
                    break
                await asyncio.sleep(min(self.meter.heartbeat, 10.0))
            await self._flush_queue()
            next_beat = time.monotonic() + self.meter.heartbeat
            while not reader.done() and not stop.is_set() and not self.stopping:
                await asyncio.sleep(0.1)
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.meter.heartbeat
                    self.later(self.send(call.Heartbeat()))
        finally:
            self.online.clear()
            reader.cancel()
            await ws.close()

    async def _flush_queue(self) -> None:
        queued, self.meter.queued = self.meter.queued, []
        for action, payload in queued:
            await self.send(getattr(call, action)(**payload), queue=True)
        self.meter.save(self.state_file)


@click.command("ocpp-charger")
@click.argument("url")
@click.option("--password", default=None, help="HTTP Basic password (security profile 1): "
              "`ocpp-password <cp>` at central's console.")
@click.option("--max-kw", type=click.FloatRange(0.1, 1000), default=22.0, show_default=True)
@click.option("--speed", type=click.FloatRange(0.01, 100000), default=DEFAULT_SPEED,
              show_default=True, help="Simulated seconds per real second.")
@click.option("--card", default="D1", show_default=True, help="The card the `c` key presents.")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Keep the meter and the queued messages in this file (a restart goes on).")
@click.option("--ca", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="For wss://: the certificate to trust (the gateway's).")
@click.option("--log-level", default="WARNING", show_default=True)
def ocpp_charger(url: str, password: str | None, max_kw: float, speed: float, card: str,
                 state: Path | None, ca: Path | None, log_level: str) -> None:
    """A simulated OCPP 1.6J charger at URL (ws[s]://host:port/<its id>)."""
    setup_logging(log_level.upper(), None)
    logging.getLogger("ocpp").setLevel(logging.WARNING)
    cp_id = url.rstrip("/").rsplit("/", 1)[-1]
    tls = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    if url.startswith("wss://") and tls is None:
        tls = ssl.create_default_context()
    stop = threading.Event()
    install_stop_signals(stop)
    charger = Charger(url, cp_id, password=password, max_kw=max_kw, speed=speed, card=card,
                      state=state, tls=tls)
    keys = KeyReader()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        thread = threading.Thread(target=pump_keys, name="charger-keys", args=(
            keys, lambda k: loop.call_soon_threadsafe(charger.later, charger.key(k)), stop))
        thread.start()
        try:
            await charger.run(stop)
        finally:
            stop.set()
            thread.join(0.5)

    say(f"{cp_id}: simulated OCPP charger for {url}; keys: c card, s stop, u unplug, "
        "f fault, r recover, d drop, q quit")
    try:
        asyncio.run(main())
    finally:
        keys.close()
        charger.meter.save(state)

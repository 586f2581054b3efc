"""The gateway's rules: what each OCPP call means to the evc network (here), and what each
of central's orders asks of a charger (orders.py); the state they share is model.py's.
One thread owns it all: the gateway's event loop (Kafka's threads hand their records over
to it; server.py gives it the chargers' calls).

For each connected charger it plays an evc CP's monitor and engine:

- a ``CentralLink`` registers the charger with central over TCP (proven with the CP's
  credential) and keeps the registration alive while the WebSocket lives;
- central's orders for the CP (``control_topic``, signed with the registration's key) become
  RemoteStartTransaction, RemoteStopTransaction, ChangeAvailability, SetChargingProfile,
  Reset, TriggerMessage, GetConfiguration and ChangeConfiguration;
- the charger's StartTransaction, MeterValues and StopTransaction become the CP's signed
  readings on ``telemetry_topic`` (the seed's keys; ``final`` with meterStop at the end);
- a card at the charger (Authorize, or a StartTransaction nobody asked for) becomes a charge
  request for the card's driver, decided by central like any other.

Nothing lost: transactions (transactionId <-> session, meterStart, the last reading), the
start orders seen, the orders obeyed, the finals Kafka has not confirmed and the position
in ``control_topic`` are journaled. A gateway killed mid-transaction and started again
reads on from where it was, and the charger's queued StopTransaction, when it reconnects,
becomes the one final reading (its meterStop) of that session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from evc.errors import BusError, ProtocolError
from evc.net import Address
from evc.ocpp import meter, orders
from evc.ocpp.link import CentralLink, LinkState
from evc.ocpp.model import CALL_FAILED, Charger, Expected, Live, Tx, now_iso
from evc.ocpp.ocppj import OcppError
from evc.ports import Journal, Send, Unconfirmed, Verdict
from evc.protocol import auth
from evc.protocol.ids import is_id
from evc.protocol.messages import (
    ChargeRequest,
    ChargerStatus,
    EndReason,
    FaultReport,
    Message,
    RecoveryReport,
    Telemetry,
    parse,
)
from evc.protocol.topics import REQUESTS, TELEMETRY, Delivery

log = logging.getLogger(__name__)

SEEN = 2000  # start orders and obeyed orders remembered (over all chargers)
CARD_WAIT = 10.0  # seconds a card waits for central's answer
BOOT_WAIT = 5.0  # seconds a BootNotification waits for the registration
REGISTERING = 32  # registrations with central under way at once
GATHER = 0.02  # seconds the journal gathers changes into one write, before answers go out
METER_EVERY = 2.0  # seconds between journal writes for readings alone (the charger's
# own meter is the truth; the journal's last reading is a fallback)


class Gateway:
    def __init__(self, send: Send, centrals: list[Address], *, journal: Journal,
                 secret_for: Callable[[str], str | None], heartbeat: float = 1.0,
                 boot_interval: int = 30, notify: Callable[[str, BusError | None], None]
                 | None = None, say: Callable[[str], None] = log.info,
                 make_link: Callable[..., CentralLink] = CentralLink) -> None:
        self.send = send
        self.centrals = centrals
        self.journal = journal
        self.secret_for = secret_for
        self.heartbeat = heartbeat
        self.boot_interval = boot_interval
        self.say = say
        self.make_link = make_link  # a fake one in unit tests
        self.live: dict[str, Live] = {}
        self.txs: dict[int, Tx] = {}
        self.next_tx = 1
        self.seen: deque[str] = deque(maxlen=SEEN)  # start orders' session ids
        self.obeyed: deque[str] = deque(maxlen=SEEN)  # orders' msg_ids
        self.offsets: dict[str, int] = {}  # "partition" -> next offset of control_topic
        self.finals = Unconfirmed(send, notify or self.final_done, say=say, sign=self._signed)
        self.held: set[str] = set()  # finals that wait for their charger's registration key
        self.dirty = False
        self.meter_dirty = False  # only readings changed: written every METER_EVERY s
        self.meter_saved = 0.0
        self._flushed: asyncio.Future[None] | None = None
        self.slots: asyncio.Semaphore | None = None  # made on the loop, at the first charger
        self.tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ journal
    def recover(self) -> None:
        data = self.journal.load()
        self.next_tx = int(data.get("next_tx", 1))
        self.seen.extend(str(s) for s in data.get("seen", []))
        self.obeyed.extend(str(s) for s in data.get("obeyed", []))
        self.offsets = {str(k): int(v) for k, v in dict(data.get("offsets", {})).items()}
        for rec in data.get("txs", []):
            tx = Tx(**rec)
            self.txs[tx.tx_id] = tx
        for wire in data.get("finals", []):
            try:
                final = parse(wire, Telemetry)
            except ProtocolError as exc:
                log.error("journal entry not understood, dropped: %s", exc)
                continue
            self.finals.add(final.session_id, TELEMETRY, final, final.cp_id)
            self.held.add(final.session_id)  # sent once its charger is registered again
        running = [tx for tx in self.txs.values() if not tx.ended and tx.session_id]
        if running:
            self.say(f"{len(running)} transaction(s) were running when the gateway stopped: "
                     "their chargers' StopTransaction or readings are awaited")

    def save(self) -> None:
        # Ended transactions are kept a while: a StopTransaction sent again is answered alike
        ended = [t for t in self.txs.values() if t.ended]
        for tx in ended[:-200]:
            del self.txs[tx.tx_id]
        self.journal.save({
            "next_tx": self.next_tx, "seen": list(self.seen), "obeyed": list(self.obeyed),
            "offsets": self.offsets, "txs": [asdict(t) for t in self.txs.values()],
            "finals": [p.message.to_wire() for p in self.finals.pending.values()],
        })
        self.dirty = self.meter_dirty = False
        self.meter_saved = time.monotonic()

    def flush(self) -> None:
        if self.dirty:
            self.save()

    async def durable(self) -> None:
        """Until what changed is in the journal: one write for every caller meanwhile
        (a thousand chargers starting at once make a few writes, not a thousand)."""
        self.dirty = True
        if self._flushed is None or self._flushed.done():
            loop = asyncio.get_running_loop()
            self._flushed = loop.create_future()
            loop.call_later(GATHER, self._flush_now, self._flushed)
        await asyncio.shield(self._flushed)

    def _flush_now(self, done: asyncio.Future[None]) -> None:
        try:
            self.flush()
        finally:
            if not done.done():
                done.set_result(None)

    # ------------------------------------------------------------------ chargers
    def connected(self, conn: Charger) -> Live:
        """A charger's WebSocket opened: its registration with central starts now (a
        charger that reconnects does not boot again)."""
        old = self.live.pop(conn.cp_id, None)
        if old is not None:  # the same charger again: the old socket is replaced
            self.spawn(old.conn.close(1000, "replaced by a new connection"))
            self.spawn(old.link.close())
        if self.slots is None:
            self.slots = asyncio.Semaphore(REGISTERING)
        link = self.make_link(conn.cp_id, self.centrals, secret=self.secret_for(conn.cp_id),
                              heartbeat=self.heartbeat, on_change=self._on_link,
                              slots=self.slots)
        live = self.live[conn.cp_id] = Live(conn, link)
        link.start()
        return live

    async def disconnected(self, conn: Charger) -> None:
        live = self.live.get(conn.cp_id)
        if live is None or live.conn is not conn:
            return
        del self.live[conn.cp_id]
        for future in live.cards.values():
            if not future.done():
                future.set_result("Invalid")
        await live.link.close()  # central sees the CP Desconectado
        self.say(f"{conn.cp_id}: charger disconnected")

    def _on_link(self, link: CentralLink) -> None:
        live = self.live.get(link.cp_id)
        if live is None or live.link is not link:
            return
        if link.state is LinkState.REGISTERED:
            self.say(f"{link.cp_id}: registered with central"
                     + (" (proven)" if link.proven else " (unproven: orders unsigned)"))
            if live.status:
                link.tell(self._status_word(link.cp_id, live.status, "", ""))
            for ident, pending in list(self.finals.pending.items()):
                if pending.key == link.cp_id and ident in self.held:
                    self.held.discard(ident)
                    self.finals.send_now(ident)
            orders.resume_stops(self, live)
        elif link.state is LinkState.REFUSED:
            self.say(f"{link.cp_id}: central refused it: {link.why}")

    def _status_word(self, cp_id: str, status: str, code: str, info: str) -> ChargerStatus:
        return ChargerStatus(cp_id=cp_id, status=status[:40], error_code=code[:40],
                             info=info[:150])

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway task failed: %r", task.exception())

    # ------------------------------------------------------------------ the charger's calls
    async def on_call(self, conn: Charger, action: str, p: dict[str, Any]) -> dict[str, Any]:
        """The answer to one CALL (validated against its schema already); OcppError to
        answer a CALLERROR instead."""
        live = self.live.get(conn.cp_id)
        if live is None or live.conn is not conn:
            raise OcppError("GenericError", "this connection was replaced")
        handler = self.ROUTES.get(action)
        if handler is None:
            raise OcppError("NotSupported", f"{action} is not supported by this central system")
        answer: dict[str, Any] = await handler(self, live, p)
        return answer

    async def _boot(self, live: Live, p: dict[str, Any]) -> dict[str, Any]:
        link = live.link
        if await link.registered(BOOT_WAIT):
            live.booted = True
            self.spawn(self._configure(live))
            return {"status": "Accepted", "currentTime": now_iso(),
                    "interval": self.boot_interval}
        if link.state is LinkState.REFUSED:
            return {"status": "Rejected", "currentTime": now_iso(), "interval": 60}
        return {"status": "Pending", "currentTime": now_iso(), "interval": 10}

    async def _configure(self, live: Live) -> None:
        """After an accepted boot: a reading each second, energy and power in each."""
        for key, value in (("MeterValueSampleInterval", "1"),
                           ("MeterValuesSampledData", f"{meter.ENERGY},{meter.POWER}")):
            try:
                answer = await live.conn.call("ChangeConfiguration", {"key": key, "value": value})
            except CALL_FAILED as exc:
                log.info("%s: ChangeConfiguration %s not done: %s", live.conn.cp_id, key, exc)
                continue
            if answer.get("status") not in ("Accepted", "RebootRequired"):
                log.info("%s: ChangeConfiguration %s: %s", live.conn.cp_id, key,
                         answer.get("status"))

    async def _heartbeat(self, live: Live, p: dict[str, Any]) -> dict[str, Any]:
        return {"currentTime": now_iso()}

    async def _status(self, live: Live, p: dict[str, Any]) -> dict[str, Any]:
        status, code = p["status"], p["errorCode"]
        info = " ".join(x for x in (p.get("info", ""), p.get("vendorErrorCode", "")) if x)
        cp_id = live.conn.cp_id
        if status == meter.FAULTED and not live.faulted:
            live.faulted = True
            live.link.healthy = False
            live.link.tell(FaultReport(cp_id=cp_id, reason=f"charger Faulted ({code})"
                                       + (f": {info}" if info else "")))
        elif status != meter.FAULTED and live.faulted and status in (
                "Available", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE",
                "Finishing", "Reserved"):
            live.faulted = False
            live.link.healthy = True
            live.link.tell(RecoveryReport(cp_id=cp_id))
        if p["connectorId"] != 0 or not live.status:
            live.status = status
        live.link.tell(self._status_word(cp_id, status, code, info))
        expected = live.expected
        if (status == "Available" and expected is not None
                and time.monotonic() - expected.at > 2.0
                and not any(t.session_id == expected.session_id for t in self.txs.values())):
            # the remote start it accepted timed out at the charger (no vehicle came)
            live.expected = None
            self.final_without_tx(cp_id, expected, EndReason.UNPLUGGED)
        return {}

    async def _authorize(self, live: Live, p: dict[str, Any]) -> dict[str, Any]:
        id_tag = p["idTag"]
        expected = live.expected
        if expected is not None and expected.driver_id == id_tag:
            return {"idTagInfo": {"status": "Accepted"}}  # the remote start's own card
        return {"idTagInfo": {"status": await self._ask_card(live, id_tag)}}

    async def _ask_card(self, live: Live, id_tag: str) -> str:
        """A card at the charger: a charge request for its driver, central decides. The
        answer is the start order (Accepted) or the denial (Invalid, Blocked)."""
        if not is_id(id_tag):
            return "Invalid"
        if live.expected is not None or any(
                t.cp_id == live.conn.cp_id and not t.ended and t.session_id
                for t in self.txs.values()):
            return "Blocked" if live.expected is None else "ConcurrentTx"
        future = live.cards.get(id_tag)
        if future is None or future.done():
            future = live.cards[id_tag] = asyncio.get_running_loop().create_future()
            request = ChargeRequest(driver_id=id_tag, cp_id=live.conn.cp_id, card=True)
            live.asked[request.msg_id] = id_tag
            try:
                self.send(REQUESTS, self.sign_for(live.link, request), id_tag)
            except BusError as exc:
                log.warning("%s: card %s not asked: %s", live.conn.cp_id, id_tag, exc)
                live.cards.pop(id_tag, None)
                return "Invalid"
        try:
            return await asyncio.wait_for(asyncio.shield(future), CARD_WAIT)
        except TimeoutError:
            self.say(f"{live.conn.cp_id}: no answer from central for card {id_tag} in "
                     f"{CARD_WAIT:g} s")
            return "Invalid"

    async def _start_tx(self, live: Live, p: dict[str, Any]) -> dict[str, Any]:
        cp_id, id_tag = live.conn.cp_id, p["idTag"]
        for tx in self.txs.values():  # the same start again (its answer was lost)
            if tx.cp_id == cp_id and tx.started == p["timestamp"] \
                    and tx.meter_start == float(p["meterStart"]):
                return {"transactionId": tx.tx_id, "idTagInfo": {
                    "status": "Accepted" if tx.session_id else "Invalid"}}
        expected = live.expected
        if expected is None or expected.driver_id != id_tag:
            status = await self._ask_card(live, id_tag)  # a local start nobody asked for
            expected = live.expected if status == "Accepted" else None
        tx = Tx(tx_id=self.next_tx, cp_id=cp_id, driver_id=id_tag,
                session_id=expected.session_id if expected else "",
                price=expected.price if expected else 0.0,
                meter_start=float(p["meterStart"]), started=p["timestamp"],
                last_wh=float(p["meterStart"]))
        self.next_tx += 1
        if expected is None:
            tx.ended = True  # refused: the charger stops it (DeAuthorized) and is answered
        else:
            live.expected = None
            tx.power_order = expected.order_id
        self.txs[tx.tx_id] = tx
        await self.durable()  # journaled before the charger learns its transactionId
        if expected is not None:
            self.reading(live, tx)
            if expected.kw is not None:
                self.spawn(orders.profile(self, live, tx, expected.kw, expected.order_id))
        return {"transactionId": tx.tx_id,
                "idTagInfo": {"status": "Accepted" if expected else "Invalid"}}

    async def _meter_values(self, live: Live, p: dict[str, Any]) -> dict[str, Any]:
        tx = self.txs.get(p.get("transactionId", -1))
        if tx is None or tx.cp_id != live.conn.cp_id or not tx.session_id:
            if "transactionId" in p:
                log.warning("%s: MeterValues for transaction %s, which it never started here",
                            live.conn.cp_id, p["transactionId"])
            return {}
        self._read(tx, p["meterValue"])
        if not tx.ended:
            self.reading(live, tx)
        return {}

    def _read(self, tx: Tx, values: list[dict[str, Any]]) -> None:
        got = meter.reading(values)
        if got.wh is not None and got.wh >= tx.last_wh:
            tx.last_wh = got.wh
        if got.kw is not None:
            tx.kw = max(0.0, got.kw)
        self.meter_dirty = True

    async def _stop_tx(self, live: Live, p: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = {"idTagInfo": {"status": "Accepted"}} if "idTag" in p else {}
        tx = self.txs.get(p["transactionId"])
        if tx is None or tx.cp_id != live.conn.cp_id:
            log.warning("%s: StopTransaction for transaction %s, unknown here",
                        live.conn.cp_id, p["transactionId"])
            return answer
        if tx.ended:
            return answer  # told already (a repeated stop, or one central refused)
        self._read(tx, p.get("transactionData", []))
        stop = float(p["meterStop"])
        tx.last_wh = max(tx.last_wh, stop) if stop >= tx.meter_start else tx.last_wh
        tx.ended = True
        decided = EndReason(tx.end_reason) if tx.end_reason else None
        reason = meter.end_reason(p.get("reason"), decided)
        final = Telemetry(cp_id=tx.cp_id, driver_id=tx.driver_id, consumo_kwh=tx.kwh,
                          importe_eur=round(tx.kwh * tx.price, 2), session_id=tx.session_id,
                          final=True, reason=str(reason), kw=0.0)
        self.finals.add(tx.session_id, TELEMETRY, final, tx.cp_id)
        await self.durable()  # journaled before the charger is answered: it sends it once
        if self._can_sign(live.link):
            self.finals.send_now(tx.session_id)
        else:
            self.held.add(tx.session_id)  # sent once registered (_on_link)
        self.say(f"{tx.cp_id}: transaction {tx.tx_id} of {tx.driver_id} ended "
                 f"({p.get('reason', 'Local')}): {tx.kwh:.3f} kWh")
        return answer

    async def _accept(self, live: Live, p: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _data_transfer(self, live: Live, p: dict[str, Any]) -> dict[str, Any]:
        return {"status": "UnknownVendorId"}

    ROUTES: dict[str, Callable[[Gateway, Live, dict[str, Any]], Any]] = {
        "BootNotification": _boot,
        "Heartbeat": _heartbeat,
        "StatusNotification": _status,
        "Authorize": _authorize,
        "StartTransaction": _start_tx,
        "MeterValues": _meter_values,
        "StopTransaction": _stop_tx,
        "DataTransfer": _data_transfer,
        "DiagnosticsStatusNotification": _accept,
        "FirmwareStatusNotification": _accept,
    }
    """The charger's CALLs and their handlers (the security extension's are NotSupported)."""

    # ------------------------------------------------------------------ readings
    def _signed(self, msg: Message) -> Message:
        live = self.live.get(getattr(msg, "cp_id", ""))
        return self.sign_for(live.link, msg) if live is not None else msg

    def sign_for(self, link: CentralLink, msg: Message) -> Message:
        key = link.key
        return auth.sign(msg, key) if key is not None else msg

    def _can_sign(self, link: CentralLink) -> bool:
        """Readings can go: signed with this registration's key, or a CP served without
        a credential (its readings unsigned)."""
        return link.secret is None or (link.state is LinkState.REGISTERED
                                       and link.key is not None)

    def reading(self, live: Live, tx: Tx) -> None:
        if not self._can_sign(live.link):
            return  # central would refuse it; the next one, or the final, carries on
        try:
            self.send(TELEMETRY, self.sign_for(live.link, Telemetry(
                cp_id=tx.cp_id, driver_id=tx.driver_id, consumo_kwh=tx.kwh,
                importe_eur=round(tx.kwh * tx.price, 2), session_id=tx.session_id,
                kw=None if tx.kw is None else round(tx.kw, 3),
                power_order=tx.power_order)), tx.cp_id)
        except BusError as exc:
            log.warning("live reading not sent: %s", exc)

    def final_without_tx(self, cp_id: str, expected: Expected, reason: EndReason) -> None:
        """A start central ordered ends before any transaction: 0 kWh, once."""
        final = Telemetry(cp_id=cp_id, driver_id=expected.driver_id, consumo_kwh=0.0,
                          importe_eur=0.0, session_id=expected.session_id, final=True,
                          reason=str(reason), kw=0.0)
        self.finals.add(final.session_id, TELEMETRY, final, cp_id)
        self.dirty = True
        self.finals.send_now(final.session_id)

    def final_done(self, session_id: str, error: BusError | None) -> None:
        if self.finals.settle(session_id, error) in (Verdict.CONFIRMED, Verdict.GAVE_UP):
            self.dirty = True

    def tick(self) -> None:
        """From the loop, a few times a second: finals due again, the journal."""
        self.finals.resend_due()
        if self.meter_dirty and time.monotonic() - self.meter_saved >= METER_EVERY:
            self.dirty = True
        self.flush()

    def on_record(self, msg: Message, delivery: Delivery) -> None:
        """A record of control_topic: orders for its chargers, answers to their cards
        (orders.py says what each one asks of a charger)."""
        orders.on_record(self, msg, delivery)

"""Central's orders for the gateway's chargers (``control_topic``), as OCPP calls: what
each one asks of a charger, and the answers to its cards. Called by the gateway, on its
event loop, with the gateway itself (as central/monitors.py is by the brain)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from evc.errors import BusError
from evc.ocpp.link import CentralLink
from evc.ocpp.model import CALL_FAILED, Expected, Live, Tx
from evc.protocol import auth
from evc.protocol.messages import (
    Authorization,
    ChargerCommand,
    ChargerNote,
    EndReason,
    EndSupply,
    EngineRefused,
    Message,
    ResumeCP,
    SetPower,
    StartSupply,
    StopCP,
    Telemetry,
)
from evc.protocol.topics import TELEMETRY, Delivery

if TYPE_CHECKING:
    from evc.ocpp.gateway import Gateway

log = logging.getLogger(__name__)

ORDERS = (StartSupply, EndSupply, StopCP, ResumeCP, SetPower, ChargerCommand)
ID_TAG = 20  # OCPP 1.6's idTag is a CiString20


def on_record(gw: Gateway, msg: Message, delivery: Delivery) -> None:
    """A record of control_topic (orders for CPs, answers for drivers)."""
    gw.offsets[str(delivery.partition)] = delivery.offset + 1
    gw.dirty = True
    if isinstance(msg, Authorization):
        _on_authorization(gw, msg)
        return
    if not isinstance(msg, ORDERS):
        return
    live = gw.live.get(msg.cp_id)
    if live is None:
        if isinstance(msg, EndSupply):
            _end_offline(gw, msg)
        return
    if not _trusted(live.link, msg):
        return
    if msg.msg_id in gw.obeyed:
        return
    gw.obeyed.append(msg.msg_id)
    match msg:
        case StartSupply():
            _on_start(gw, live, msg)
        case EndSupply():
            _on_end(gw, live, msg.session_id, msg.reason)
        case StopCP():
            gw.spawn(_availability(gw, live, "Inoperative"))
        case ResumeCP():
            gw.spawn(_availability(gw, live, "Operative"))
        case SetPower():
            tx = _tx_of(gw, msg.session_id)
            if tx is not None and not tx.ended:
                gw.spawn(profile(gw, live, tx, msg.kw, msg.msg_id))
        case ChargerCommand():
            gw.spawn(_command(gw, live, msg))

def _trusted(link: CentralLink, msg: Message) -> bool:
    """Signed with this registration's key (or the one before); unsigned only for a
    CP served unproven. A CP whose credential the gateway holds wants signed orders
    from the start, also before its registration is done (no key yet: none counts)."""
    if link.proven or link.keys or link.secret is not None:
        key = link.keys.get(msg.kid)
        if key is None or not auth.verify(msg, key):
            log.warning("%s: refused a %s order not signed with its key", link.cp_id,
                        msg.TYPE)
            link.tell(EngineRefused(cp_id=link.cp_id, refused=(
                f"a {msg.TYPE} order not signed with its key")))
            return False
    return True

def _tx_of(gw: Gateway, session_id: str) -> Tx | None:
    return next((t for t in gw.txs.values() if t.session_id == session_id), None)

def _on_authorization(gw: Gateway, msg: Authorization) -> None:
    live = gw.live.get(msg.cp_id)
    if live is None or msg.request_id not in live.asked:
        return
    id_tag = live.asked.pop(msg.request_id)
    if not msg.authorized:
        future = live.cards.pop(id_tag, None)
        if future is not None and not future.done():
            future.set_result("Blocked" if msg.code is not None
                              and str(msg.code) == "driver_busy" else "Invalid")
        gw.say(f"{live.conn.cp_id}: card {id_tag} refused by central: {msg.reason}")

def _on_start(gw: Gateway, live: Live, msg: StartSupply) -> None:
    if msg.session_id in gw.seen:
        return
    gw.seen.append(msg.session_id)
    gw.dirty = True
    card = live.cards.pop(msg.driver_id, None)
    expected = Expected(msg.session_id, msg.driver_id, msg.price_eur_kwh, msg.msg_id,
                        msg.kw, card=card is not None)
    if card is not None:  # the card's own request: the charger is starting already
        live.expected = expected
        if not card.done():
            card.set_result("Accepted")
        _first_reading(gw, live, expected)
        return
    gw.spawn(_remote_start(gw, live, expected))

def _first_reading(gw: Gateway, live: Live, e: Expected) -> None:
    """The start is under way at the charger: central's start deadline is met."""
    try:
        gw.send(TELEMETRY, gw.sign_for(live.link, Telemetry(
            cp_id=live.conn.cp_id, driver_id=e.driver_id, consumo_kwh=0.0,
            importe_eur=0.0, session_id=e.session_id, power_order=e.order_id)),
            live.conn.cp_id)
    except BusError as exc:
        log.warning("first reading not sent: %s", exc)

async def _remote_start(gw: Gateway, live: Live, e: Expected) -> None:
    cp_id = live.conn.cp_id
    why = ""
    if len(e.driver_id) > ID_TAG:
        why = f"driver id {e.driver_id} is longer than OCPP's {ID_TAG}-character idTag"
    elif live.expected is not None or any(
            t.cp_id == cp_id and not t.ended and t.session_id for t in gw.txs.values()):
        why = "busy with another transaction"
    else:
        live.expected = e
        try:
            answer = await live.conn.call("RemoteStartTransaction",
                                          {"connectorId": 1, "idTag": e.driver_id})
            if answer.get("status") != "Accepted":
                why = f"the charger answered RemoteStartTransaction {answer.get('status')}"
        except CALL_FAILED as exc:
            why = f"RemoteStartTransaction failed: {exc}"
        if why and live.expected is e:
            live.expected = None
    if why:
        gw.say(f"{cp_id}: start for {e.driver_id} refused: {why}")
        live.link.tell(EngineRefused(cp_id=cp_id, refused=why[:190],
                                     session_id=e.session_id))
        gw.final_without_tx(cp_id, e, EndReason.REFUSED)
        return
    if live.expected is e:
        _first_reading(gw, live, e)

def _on_end(gw: Gateway, live: Live, session_id: str, reason: EndReason) -> None:
    tx = _tx_of(gw, session_id)
    if tx is not None:
        if tx.ended:
            return
        tx.end_reason = str(reason)
        gw.dirty = True
        gw.spawn(_remote_stop(gw, live, tx))
        return
    expected = live.expected
    if expected is not None and expected.session_id == session_id:
        live.expected = None  # no transaction yet: nothing was supplied
        gw.final_without_tx(live.conn.cp_id, expected, reason)

def _end_offline(gw: Gateway, msg: EndSupply) -> None:
    """An end for a charger that is away: its transaction is stopped when it returns
    (its StopTransaction then carries the meter)."""
    tx = _tx_of(gw, msg.session_id)
    if tx is not None and not tx.ended and not tx.end_reason:
        tx.end_reason = str(msg.reason)
        gw.dirty = True

async def _remote_stop(gw: Gateway, live: Live, tx: Tx) -> None:
    try:
        answer = await live.conn.call("RemoteStopTransaction", {"transactionId": tx.tx_id})
    except CALL_FAILED as exc:
        log.warning("%s: RemoteStopTransaction failed: %s", tx.cp_id, exc)
        return
    if answer.get("status") != "Accepted":
        gw.say(f"{tx.cp_id}: the charger rejected RemoteStopTransaction "
                 f"{tx.tx_id}")

def resume_stops(gw: Gateway, live: Live) -> None:
    """A charger back: transactions central ended meanwhile are stopped now."""
    for tx in list(gw.txs.values()):
        if tx.cp_id == live.conn.cp_id and not tx.ended and tx.end_reason:
            gw.spawn(_remote_stop(gw, live, tx))

async def _availability(gw: Gateway, live: Live, kind: str) -> None:
    if live.availability == kind:
        return
    try:
        answer = await live.conn.call("ChangeAvailability",
                                      {"connectorId": 0, "type": kind})
    except CALL_FAILED as exc:
        log.warning("%s: ChangeAvailability %s failed: %s", live.conn.cp_id, kind, exc)
        return
    if answer.get("status") in ("Accepted", "Scheduled"):
        live.availability = kind
    else:
        live.link.tell(ChargerNote(cp_id=live.conn.cp_id,
                                   note=f"ChangeAvailability {kind}: {answer.get('status')}"))

async def profile(gw: Gateway, live: Live, tx: Tx, kw: float | None, order_id: str) -> None:
    """Central's share of the site's limit, as the transaction's TxProfile (none: the
    profile cleared); readings name the order once the charger accepted it."""
    try:
        if kw is None:
            answer = await live.conn.call("ClearChargingProfile", {"id": tx.tx_id})
            ok = answer.get("status") in ("Accepted", "Unknown")
        else:
            answer = await live.conn.call("SetChargingProfile", {
                "connectorId": 1, "csChargingProfiles": {
                    "chargingProfileId": tx.tx_id, "transactionId": tx.tx_id,
                    "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
                    "chargingProfileKind": "Relative", "chargingSchedule": {
                        "chargingRateUnit": "W", "chargingSchedulePeriod": [
                            {"startPeriod": 0, "limit": round(max(0.0, kw) * 1000, 1)}]}}})
            ok = answer.get("status") == "Accepted"
    except CALL_FAILED as exc:
        log.warning("%s: charging profile not set: %s", tx.cp_id, exc)
        return
    if not ok:
        live.link.tell(EngineRefused(cp_id=tx.cp_id, refused=(
            f"a power limit of {kw} kW (the charger answered {answer.get('status')})")))
        return
    tx.power_order = order_id
    if kw is not None:
        tx.kw = min(tx.kw, kw) if tx.kw is not None else None
    gw.reading(live, tx)

async def _command(gw: Gateway, live: Live, msg: ChargerCommand) -> None:
    action, arg = msg.action, msg.arg
    payload: dict[str, Any]
    if action == "Reset":
        payload = {"type": arg or "Soft"}
    elif action == "TriggerMessage":
        payload = {"requestedMessage": arg, "connectorId": 1} \
            if arg in ("MeterValues", "StatusNotification") else {"requestedMessage": arg}
    elif action == "GetConfiguration":
        payload = {"key": [arg]} if arg else {}
    elif action == "ChangeConfiguration":
        key, _, value = arg.partition("=")
        payload = {"key": key, "value": value}
    else:
        live.link.tell(ChargerNote(cp_id=live.conn.cp_id, note=f"unknown command {action}"))
        return
    try:
        answer = await live.conn.call(action, payload)
        text = _answer_words(action, answer)
    except CALL_FAILED as exc:
        text = f"{action} failed: {exc or type(exc).__name__}"
    live.link.tell(ChargerNote(cp_id=live.conn.cp_id, note=text[:190]))


def _answer_words(action: str, answer: dict[str, Any]) -> str:
    if action == "GetConfiguration":
        pairs = [f"{k.get('key')}={k.get('value', '')}" for k in answer.get("configurationKey", [])]
        unknown = answer.get("unknownKey", [])
        return ("configuration: " + ", ".join(pairs)
                + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    return f"{action}: {answer.get('status', 'done')}"

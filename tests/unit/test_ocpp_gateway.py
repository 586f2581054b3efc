"""The gateway's rules (evc/ocpp/gateway.py) with a fake charger connection, a fake central
link and a list for Kafka: no socket, no broker."""

from __future__ import annotations

import asyncio
from typing import Any

from evc.ocpp.gateway import Gateway
from evc.ocpp.link import LinkState
from evc.ocpp.ocppj import OcppError
from evc.protocol import auth
from evc.protocol import messages as m
from evc.protocol.topics import REQUESTS, TELEMETRY

KEY = "11" * 32


class FakeLink:
    def __init__(self, cp_id: str, centrals, *, secret, heartbeat, on_change, slots) -> None:
        self.cp_id = cp_id
        self.secret = secret
        self.state = LinkState.REGISTERED
        self.keys = {auth.key_id(KEY): KEY}
        self.proven = True
        self.healthy = True
        self.told: list[m.Message] = []
        self.why = ""

    @property
    def key(self) -> str:
        return KEY

    def start(self) -> None:
        pass

    async def registered(self, within: float) -> bool:
        return True

    def tell(self, msg: m.Message) -> None:
        self.told.append(msg)

    async def close(self) -> None:
        self.state = LinkState.CLOSED


class FakeCharger:
    def __init__(self, cp_id: str = "CP-07", answers: dict[str, dict] | None = None) -> None:
        self.cp_id = cp_id
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answers = answers or {}

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((action, payload))
        return self.answers.get(action, {"status": "Accepted"})

    async def close(self, code: int, reason: str) -> None:
        pass


class Journal:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def load(self) -> dict[str, Any]:
        return dict(self.data)

    def save(self, data: dict[str, Any]) -> None:
        self.data = data


def gateway(journal: Journal, sent: list) -> Gateway:
    def send(topic, message, key, on_done=None):
        sent.append((topic, message))
        if on_done is not None:
            on_done(None)

    gw = Gateway(send, [], journal=journal, secret_for=lambda _cp: KEY, make_link=FakeLink)
    gw.recover()
    return gw


def connected(answers: dict[str, dict] | None = None, journal: Journal | None = None):
    """A gateway (on the running loop) with charger CP-07 connected and registered:
    (gateway, charger, its Live, what went to Kafka)."""
    sent: list = []
    gw = gateway(journal or Journal(), sent)
    charger = FakeCharger(answers=answers)
    return gw, charger, gw.connected(charger), sent


async def card(gw: Gateway, charger: FakeCharger, sent: list, id_tag: str):
    """A card presented: (the Authorize's answer still to come, the request it made)."""
    asking = asyncio.ensure_future(gw.on_call(charger, "Authorize", {"idTag": id_tag}))
    await settle()
    return asking, [msg for topic, msg in sent if topic == REQUESTS][-1]


def delivery(offset: int = 0) -> m.Delivery:
    return m.Delivery("control_topic", 0, offset)


def start_order(driver: str = "D1") -> m.StartSupply:
    return auth.sign(m.StartSupply(cp_id="CP-07", driver_id=driver, session_id="s1",
                                   price_eur_kwh=0.5), KEY)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def readings(sent) -> list[m.Telemetry]:
    return [msg for topic, msg in sent if topic == TELEMETRY]


def test_a_remote_supply_from_order_to_final():
    async def scenario() -> None:
        journal = Journal()
        gw, charger, _, sent = connected(journal=journal)
        gw.on_record(start_order(), delivery())
        await settle()
        assert charger.calls[0] == ("RemoteStartTransaction", {"connectorId": 1, "idTag": "D1"})
        assert readings(sent)[-1].consumo_kwh == 0 and readings(sent)[-1].kid
        start = {"connectorId": 1, "idTag": "D1", "meterStart": 1000,
                 "timestamp": "2026-12-04T10:00:00Z"}
        answer = await gw.on_call(charger, "StartTransaction", start)
        assert answer["idTagInfo"]["status"] == "Accepted"
        tx_id = answer["transactionId"]
        assert (await gw.on_call(charger, "StartTransaction", start))["transactionId"] == tx_id
        await gw.on_call(charger, "MeterValues", {"connectorId": 1, "transactionId": tx_id,
                                                  "meterValue": [{"timestamp": "t",
                                                                  "sampledValue": [
                                                                      {"value": "2.5",
                                                                       "unit": "kWh"}]}]})
        live = readings(sent)[-1]
        assert (live.consumo_kwh, live.importe_eur, live.final) == (1.5, 0.75, False)
        gw.on_record(auth.sign(m.EndSupply(cp_id="CP-07", session_id="s1",
                                           reason=m.EndReason.FINISHED), KEY), delivery(1))
        await settle()
        assert charger.calls[-1] == ("RemoteStopTransaction", {"transactionId": tx_id})
        stop = {"transactionId": tx_id, "meterStop": 3000, "timestamp": "t", "reason": "Remote"}
        assert await gw.on_call(charger, "StopTransaction", stop) == {}
        final = readings(sent)[-1]
        assert (final.final, final.consumo_kwh, final.reason) == (True, 2.0, "finished")
        await gw.on_call(charger, "StopTransaction", stop)  # again: answered, not told again
        assert len([t for t in readings(sent) if t.final]) == 1
        assert journal.data["offsets"] == {"0": 2}

    asyncio.run(scenario())


def test_a_restarted_gateway_finishes_the_journaled_transaction():
    async def scenario() -> None:
        journal = Journal()
        gw, charger, _, sent = connected(journal=journal)
        gw.on_record(start_order(), delivery())
        await settle()
        tx_id = (await gw.on_call(charger, "StartTransaction", {
            "connectorId": 1, "idTag": "D1", "meterStart": 0, "timestamp": "t0"}))[
            "transactionId"]
        gw.flush()
        # killed; a new one from the journal, and the charger's queued stop
        sent2: list = []
        again = gateway(journal, sent2)
        charger2 = FakeCharger()
        again.connected(charger2)
        again.on_record(start_order(), delivery())  # the same order read again: not obeyed
        await settle()
        assert charger2.calls == []
        await again.on_call(charger2, "StopTransaction", {
            "transactionId": tx_id, "meterStop": 4200, "timestamp": "t1",
            "reason": "EVDisconnected"})
        final = readings(sent2)[-1]
        assert (final.session_id, final.consumo_kwh, final.reason) == ("s1", 4.2, "unplugged")
        assert again.next_tx == tx_id + 1

    asyncio.run(scenario())


def test_unsigned_or_forged_orders_are_refused_and_said():
    async def scenario() -> None:
        gw, charger, live, _ = connected()
        gw.on_record(m.StartSupply(cp_id="CP-07", driver_id="D1", session_id="s1",
                                   price_eur_kwh=0.5), delivery())
        gw.on_record(auth.sign(m.StopCP(cp_id="CP-07"), "22" * 32), delivery(1))
        await settle()
        assert charger.calls == []
        assert [type(t) for t in live.link.told] == [m.EngineRefused, m.EngineRefused]
        # before its registration is done (no key yet), an unsigned order is not obeyed
        # either, nor a reading sent unsigned for a CP whose credential is here
        live.link.keys, live.link.proven = {}, False
        live.link.state = LinkState.CONNECTING
        gw.on_record(m.StopCP(cp_id="CP-07"), delivery(2))
        await settle()
        assert charger.calls == []

    asyncio.run(scenario())


def test_a_card_becomes_a_request_and_centrals_answer_the_id_tag_info():
    async def scenario() -> None:
        gw, charger, _, sent = connected()
        asking, request = await card(gw, charger, sent, "D2")
        assert request.card and request.driver_id == "D2" and auth.verify(request, KEY)
        gw.on_record(auth.sign(m.StartSupply(cp_id="CP-07", driver_id="D2", session_id="s2",
                                             price_eur_kwh=0.5), KEY), delivery())
        assert (await asking)["idTagInfo"]["status"] == "Accepted"
        assert charger.calls == []  # a local start: no RemoteStartTransaction
        answer = await gw.on_call(charger, "StartTransaction", {
            "connectorId": 1, "idTag": "D2", "meterStart": 0, "timestamp": "t"})
        assert answer["idTagInfo"]["status"] == "Accepted"
        # a second card while it charges is not even asked for
        assert (await gw.on_call(charger, "Authorize", {"idTag": "D3"}))[
            "idTagInfo"]["status"] == "Blocked"

    asyncio.run(scenario())


def test_a_card_central_refuses_is_invalid_and_a_bad_id_tag_never_asked():
    async def scenario() -> None:
        gw, charger, _, sent = connected()
        asking, request = await card(gw, charger, sent, "NOBODY")
        gw.on_record(m.Authorization(driver_id="NOBODY", cp_id="CP-07",
                                     request_id=request.msg_id, authorized=False,
                                     code=m.DenyCode.UNKNOWN_DRIVER), delivery())
        assert (await asking)["idTagInfo"]["status"] == "Invalid"
        asked = len(sent)
        assert (await gw.on_call(charger, "Authorize", {"idTag": "bad id!"}))[
            "idTagInfo"]["status"] == "Invalid"
        assert len(sent) == asked

    asyncio.run(scenario())


def test_meter_values_for_a_transaction_never_started_are_answered_and_ignored():
    async def scenario() -> None:
        gw, charger, _, sent = connected()
        assert await gw.on_call(charger, "MeterValues", {
            "connectorId": 1, "transactionId": 99, "meterValue": []}) == {}
        assert await gw.on_call(charger, "StopTransaction", {
            "transactionId": 99, "meterStop": 5, "timestamp": "t"}) == {}
        assert readings(sent) == []
        try:
            await gw.on_call(charger, "SignCertificate", {"csr": "x"})
        except OcppError as exc:
            assert exc.code == "NotSupported"

    asyncio.run(scenario())


def test_a_fault_and_its_recovery_reach_central():
    async def scenario() -> None:
        gw, charger, live, _ = connected()
        for status in ("Faulted", "Available"):
            await gw.on_call(charger, "StatusNotification", {
                "connectorId": 1, "errorCode": "GroundFailure" if status == "Faulted"
                else "NoError", "status": status})
        kinds = [type(t).__name__ for t in live.link.told]
        assert kinds == ["FaultReport", "ChargerStatus", "RecoveryReport", "ChargerStatus"]
        assert "GroundFailure" in live.link.told[0].reason

    asyncio.run(scenario())


def test_orders_become_the_chargers_calls():
    async def scenario() -> None:
        gw, charger, live, sent = connected(answers={"GetConfiguration": {
            "configurationKey": [{"key": "HeartbeatInterval", "readonly": False,
                                  "value": "30"}], "unknownKey": ["Nope"]}})
        boot = await gw.on_call(charger, "BootNotification", {
            "chargePointVendor": "v", "chargePointModel": "m"})
        assert boot["status"] == "Accepted" and boot["interval"] == 30
        await settle()
        assert [c[1]["key"] for c in charger.calls] == ["MeterValueSampleInterval",
                                                          "MeterValuesSampledData"]
        for i, order in enumerate((m.StopCP(cp_id="CP-07"), m.StopCP(cp_id="CP-07"),
                                   m.ResumeCP(cp_id="CP-07"),
                                   m.ChargerCommand(cp_id="CP-07", action="Reset", arg="Hard"),
                                   m.ChargerCommand(cp_id="CP-07", action="GetConfiguration",
                                                    arg=""))):
            gw.on_record(auth.sign(order, KEY), delivery(i))
            await settle()
        calls = charger.calls[2:]
        assert calls == [("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}),
                         ("ChangeAvailability", {"connectorId": 0, "type": "Operative"}),
                         ("Reset", {"type": "Hard"}), ("GetConfiguration", {})]
        notes = [t.note for t in live.link.told if isinstance(t, m.ChargerNote)]
        assert notes == ["Reset: Accepted",
                         "configuration: HeartbeatInterval=30; unknown: Nope"]
        # a site's share: the transaction's TxProfile, and readings name the order
        gw.on_record(start_order(), delivery(9))
        await settle()
        tx_id = (await gw.on_call(charger, "StartTransaction", {
            "connectorId": 1, "idTag": "D1", "meterStart": 0, "timestamp": "t"}))[
            "transactionId"]
        power = auth.sign(m.SetPower(cp_id="CP-07", session_id="s1", kw=7.4, seq=1), KEY)
        gw.on_record(power, delivery(10))
        await settle()
        action, payload = charger.calls[-1]
        profile = payload["csChargingProfiles"]
        assert action == "SetChargingProfile" and profile["transactionId"] == tx_id
        assert profile["chargingProfilePurpose"] == "TxProfile"
        assert profile["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 7400.0
        assert readings(sent)[-1].power_order == power.msg_id
        gw.on_record(auth.sign(m.SetPower(cp_id="CP-07", session_id="s1", kw=None, seq=2),
                               KEY), delivery(11))
        await settle()
        assert charger.calls[-1] == ("ClearChargingProfile", {"id": tx_id})

    asyncio.run(scenario())


def test_a_remote_start_the_charger_rejects_is_refused_with_0_kwh():
    async def scenario() -> None:
        gw, charger, live, sent = connected(
            answers={"RemoteStartTransaction": {"status": "Rejected"}})
        gw.on_record(start_order(), delivery())
        await settle()
        final = readings(sent)[-1]
        assert (final.final, final.consumo_kwh, final.reason) == (True, 0.0, "refused")
        refused = [t for t in live.link.told if isinstance(t, m.EngineRefused)]
        assert "Rejected" in refused[0].refused and refused[0].session_id == "s1"

    asyncio.run(scenario())

"""OCPP chargers through `evc ocpp`: a real broker, a real central, a real gateway process and
chargers built on the ocpp package's v16 ChargePoint over real WebSockets (the simulator,
`evc ocpp-charger`), or raw WebSocket clients for what no charger should send."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from evc.protocol import messages as m
from tests.helpers import Proc, wait_for
from tests.network import Network, Observer

pytestmark = pytest.mark.central()


def meter_of(charger, tx_line: str) -> tuple[float, float]:
    """(meterStart, meterStop) in Wh of the charger's transaction, from its own lines."""
    started = charger.wait_line("started at")
    stopped = charger.wait_line(tx_line)
    start = float(re.search(r"started at (\d+) Wh", started).group(1))
    stop = float(re.search(r"at (\d+) Wh", stopped.split("stopped", 1)[1]).group(1))
    return start, stop


def drive(net: Network, driver: str, cp_id: str, seconds: float = 3.0):
    return net.start_driver(driver, [cp_id], "--charge-seconds", str(seconds))


def supplying(net: Network, observer: Observer, seconds: float = 60):
    """The gateway and charger CP-01, supplying D-1 (three live readings seen)."""
    gateway = net.start_gateway()
    charger = net.start_charger("CP-01")
    net.wait_state("CP-01", "Activado")
    drive(net, "D-1", "CP-01", seconds=seconds)
    observer.wait(m.Telemetry, count=3, driver_id="D-1", final=False)
    return gateway, charger


def test_remote_start_supply_whose_ticket_is_the_chargers_meter(net: Network,
                                                               observer: Observer):
    net.start_gateway()
    charger = net.start_charger("CP-01")
    net.wait_state("CP-01", "Activado")
    driver = drive(net, "D-1", "CP-01")
    ticket = observer.wait(m.Ticket, driver_id="D-1", timeout=30)[0]
    start, stop = meter_of(charger, "stopped (Remote)")
    assert ticket.consumo_kwh == round((stop - start) / 1000, 4) > 0
    assert ticket.importe_eur == round(ticket.consumo_kwh * 0.35, 2)
    assert ticket.reason is m.EndReason.FINISHED
    readings = observer.of(m.Telemetry, session_id=ticket.session_id)
    assert [t for t in readings if t.final][0].consumo_kwh == ticket.consumo_kwh
    assert all(t.kid for t in readings), "readings signed with the CP's key"
    driver.wait_line("TICKET at CP-01")
    # the board marks it, with the charger's own status
    net.central.wait_line("CP-01's charger is Charging")
    assert "supply authorized for D-1" in net.central.output


def test_card_at_the_charger_registered_and_unknown(net: Network, observer: Observer):
    net.start_gateway()
    charger = net.start_charger("CP-01")
    net.wait_state("CP-01", "Activado")
    charger.send("card NOBODY")
    charger.wait_line("card NOBODY refused (Invalid)")
    assert net.current_state("CP-01") == "Activado"
    charger.send("card D-2")
    charger.wait_line("transaction")
    net.wait_state("CP-01", "Suministrando")
    observer.wait(m.Telemetry, count=3, driver_id="D-2")
    charger.send("stop")
    ticket = observer.wait(m.Ticket, driver_id="D-2", timeout=20)[0]
    start, stop = meter_of(charger, "stopped (Local)")
    assert ticket.consumo_kwh == round((stop - start) / 1000, 4)
    assert ticket.reason is m.EndReason.LOCAL
    request = observer.of(m.ChargeRequest, driver_id="D-2")[0]
    assert request.card and request.kid  # signed with the CP's key, not the driver's


def test_fault_during_a_supply_ends_it_and_the_cp_is_averiado(net: Network,
                                                              observer: Observer):
    _, charger = supplying(net, observer)
    charger.send("fault")
    net.wait_state("CP-01", "Averiado")
    ticket = observer.wait(m.Ticket, driver_id="D-1", timeout=25)[0]
    assert ticket.reason is m.EndReason.FAULT
    start, stop = meter_of(charger, "stopped (Other)")
    assert ticket.consumo_kwh == round((stop - start) / 1000, 4)
    charger.send("recover")
    net.wait_state("CP-01", "Activado")


def test_operator_stop_resume_and_commands_reach_the_charger_and_a_drop_is_seen(
        net: Network):
    net.start_gateway()
    charger = net.start_charger("CP-01")
    net.wait_state("CP-01", "Activado")
    net.central.send("stop CP-01")
    net.wait_state("CP-01", "Parado")
    net.central.wait_line("CP-01's charger is Unavailable")
    net.central.send("resume CP-01")
    net.wait_state("CP-01", "Activado")
    net.central.wait_line("CP-01's charger is Available", count=2)
    net.central.send("ocpp CP-01 get MeterValueSampleInterval")
    net.central.wait_line("CP-01's charger: configuration: MeterValueSampleInterval=1")
    net.central.send("ocpp-password CP-01")
    net.central.wait_line(f"password {net.ocpp_password('CP-01')}")
    # the WebSocket dropped (the charger killed): Desconectado; back, Activado
    charger.kill()
    net.wait_state("CP-01", "Desconectado", timeout=8)
    net.start_charger("CP-01")
    net.wait_state("CP-01", "Activado")


def test_gateway_killed_mid_transaction_gives_one_ticket_with_the_meter_stop(
        net: Network, observer: Observer):
    gateway, charger = supplying(net, observer)
    gateway.kill()
    net.wait_state("CP-01", "Desconectado", timeout=10)
    net.start_gateway()
    charger.wait_line("booted")  # it never boots again: this is the first line
    ticket = observer.wait(m.Ticket, driver_id="D-1", timeout=40)[0]
    start, stop = meter_of(charger, "stopped (Remote)")
    assert ticket.consumo_kwh == round((stop - start) / 1000, 4) > 0
    assert ticket.reason is m.EndReason.DISCONNECTED
    wait_for(lambda: len(observer.of(m.Telemetry, driver_id="D-1", final=True)) >= 1, 5,
             "the final reading")
    assert len(observer.of(m.Ticket, driver_id="D-1")) == 1
    net.wait_state("CP-01", "Activado", timeout=15)


def test_central_failover_with_a_charger_mid_supply(net: Network, observer: Observer):
    from tests.flow.test_failover import second_central

    a = net.central
    b, b_port = second_central(net)
    b.wait_line("standby: following the active central", timeout=40)
    net.start_gateway(centrals=f"127.0.0.1:{net.port},127.0.0.1:{b_port}")
    charger = net.start_charger("CP-01")
    net.wait_state("CP-01", "Activado")
    driver = drive(net, "D-1", "CP-01", seconds=8)
    driver.wait_line("live at CP-01: 1.", timeout=20)
    a.kill()
    b.wait_line("central ready (active", timeout=15)
    net.gateway.wait_line("CP-01: registered with central", count=2, timeout=15)
    ticket = observer.wait(m.Ticket, driver_id="D-1", timeout=30)[0]
    start, stop = meter_of(charger, "stopped (Remote)")
    assert ticket.consumo_kwh == round((stop - start) / 1000, 4) > 1.0
    assert ticket.reason is m.EndReason.FINISHED
    assert len(observer.of(m.Ticket, driver_id="D-1")) == 1


def test_a_site_limit_becomes_the_chargers_charging_profile(net: Network,
                                                            observer: Observer):
    net.start_gateway()
    net.start_charger("CP-01")
    net.wait_state("CP-01", "Activado")
    net.central.send("site P1 add CP-01")
    net.central.send("site P1 limit 11")
    net.central.wait_line("site P1: limit 11 kW")
    drive(net, "D-1", "CP-01", seconds=60)
    # the charger accepted the TxProfile and draws 11 kW of its 22: its readings say so
    observer.wait(m.Telemetry, driver_id="D-1", kw=11.0, timeout=15)


def test_security_profile_2_tls_with_a_self_signed_certificate(net: Network,
                                                                observer: Observer):
    gateway = net.start_gateway("--self-signed")
    fingerprint = gateway.wait_line("SHA-256 fingerprint")
    assert re.search(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", fingerprint)
    cert = net.tmp / "gateway" / "ocpp-self-signed.pem"
    charger = Proc(["ocpp-charger", f"wss://127.0.0.1:{net.gateway_port}/CP-01", "--password",
                    net.ocpp_password("CP-01"), "--ca", str(cert)], name="tls charger")
    net.procs.append(charger)
    charger.wait_line("booted", timeout=20)
    net.wait_state("CP-01", "Activado")
    # a plain ws:// client gets no WebSocket from a TLS port
    assert _status_url(f"ws://127.0.0.1:{net.gateway_port}/CP-01") != 101


def test_charger_stops_while_the_gateway_is_dead_and_its_queued_stop_is_the_final(
        net: Network, observer: Observer):
    gateway, charger = supplying(net, observer)
    gateway.kill()
    charger.send("unplug")  # queued by the charger until the gateway is back
    charger.wait_line("stopped (EVDisconnected)")
    net.start_gateway()
    ticket = observer.wait(m.Ticket, driver_id="D-1", timeout=40)[0]
    start, stop = meter_of(charger, "stopped (EVDisconnected)")
    assert ticket.consumo_kwh == round((stop - start) / 1000, 4) > 0
    finals = observer.of(m.Telemetry, driver_id="D-1", final=True)
    assert finals and all(f.kid for f in finals)  # signed: sent once it registered
    assert len({f.msg_id for f in finals}) == 1  # one final (Kafka may hold it twice)
    assert len(observer.of(m.Ticket, driver_id="D-1")) == 1


def test_central_killed_and_restarted_mid_supply_the_charger_goes_on(net: Network,
                                                                      observer: Observer):
    _, charger = supplying(net, observer, seconds=12)
    net.central.kill()
    net.start_central()
    net.gateway.wait_line("CP-01: registered with central", count=2, timeout=20)
    ticket = observer.wait(m.Ticket, driver_id="D-1", timeout=40)[0]
    start, stop = meter_of(charger, "stopped (Remote)")
    assert ticket.consumo_kwh == round((stop - start) / 1000, 4)
    assert ticket.reason is m.EndReason.FINISHED
    assert len(observer.of(m.Ticket, driver_id="D-1")) == 1


# ---------------------------------------------------------------------- bad input


async def _open(net: Network, cp_id: str, *, password: str | None = "",
                protocols=("ocpp1.6",)):
    pw = net.ocpp_password(cp_id) if password == "" else password
    headers = {}
    if pw is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{cp_id}:{pw}".encode()).decode()
    return await connect(f"ws://127.0.0.1:{net.gateway_port}/{cp_id}",
                         subprotocols=list(protocols) or None, additional_headers=headers,
                         open_timeout=5, max_size=None)


def _status(net: Network, cp_id: str, **kw) -> int:
    async def attempt() -> int:
        try:
            ws = await _open(net, cp_id, **kw)
        except InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return 101

    return asyncio.run(attempt())


def _status_url(url: str) -> int:
    async def attempt() -> int:
        try:
            ws = await connect(url, subprotocols=["ocpp1.6"], open_timeout=5)
        except InvalidStatus as exc:
            return exc.response.status_code
        except (OSError, EOFError, TimeoutError, ConnectionClosed, InvalidMessage):
            return 0
        await ws.close()
        return 101

    return asyncio.run(attempt())


def handshakes_refused_and_audited(net: Network) -> None:
    assert _status(net, "CP-01", protocols=()) == 400  # no ocpp1.6 subprotocol
    assert _status(net, "CP-01", password="wrong-password") == 401
    assert _status(net, "CP-01", password=None) == 401
    assert _status(net, "NOT-IN-REGISTRY", password=None) == 401
    assert _status(net, "b%C3%A4d", password=None) == 404  # not an id
    audit = (net.tmp / "gateway" / f"ocpp-{net.gateway_port}-audit.jsonl").read_text()
    events = [json.loads(line) for line in audit.splitlines()]
    assert {e.get("why") for e in events} >= {"wrong password", "no password",
                                             "not in central's registry"}


def test_bad_handshakes_garbage_and_a_crowd_harm_no_other_charger(
        net: Network, observer: Observer):
    gateway = net.start_gateway()
    net.start_charger("CP-02")
    net.wait_state("CP-02", "Activado")
    drive(net, "D-3", "CP-02", seconds=9)
    observer.wait(m.Telemetry, count=2, driver_id="D-3", final=False)
    handshakes_refused_and_audited(net)

    async def abuse() -> dict[str, object]:
        seen: dict[str, object] = {}
        ws = await _open(net, "CP-01")

        async def ask(text: str):
            await ws.send(text)
            while True:  # the gateway's own CALLs (ChangeAvailability...) are let by
                answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if answer[0] != 2:
                    return answer

        seen["not json"] = await ask("this is not json")
        seen["not array"] = await ask('{"a": 1}')
        seen["bad type"] = await ask('[7, "x1", "Heartbeat", {}]')
        seen["unknown"] = await ask('[2, "u1", "MakeCoffee", {}]')
        seen["type"] = await ask('[2, "s1", "Heartbeat", {"extra": 1}]')
        seen["schema"] = await ask('[2, "s2", "StatusNotification", {"connectorId": "one", '
                                   '"errorCode": "NoError", "status": "Available"}]')
        seen["missing"] = await ask('[2, "s3", "StartTransaction", {"connectorId": 1}]')
        seen["enum"] = await ask('[2, "s4", "StatusNotification", {"connectorId": 1, '
                                 '"errorCode": "NoError", "status": "Sleeping"}]')
        seen["no tx"] = await ask('[2, "mv", "MeterValues", {"connectorId": 1, '
                                  '"transactionId": 424242, "meterValue": [{"timestamp": '
                                  '"2026-12-04T10:00:00Z", "sampledValue": [{"value": '
                                  '"99999"}]}]}]')
        seen["heartbeat"] = await ask('[2, "h1", "Heartbeat", {}]')
        seen["again"] = await ask('[2, "h1", "Heartbeat", {}]')  # the same id: same answer
        try:
            await ws.send("x" * (10 * 1024 * 1024))
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as exc:
            seen["10 MB"] = exc.rcvd.code if exc.rcvd else None
        return seen

    seen = asyncio.run(abuse())
    assert seen["not json"][:3] == [4, "-1", "ProtocolError"]
    assert seen["not array"][2] == "ProtocolError"
    assert seen["bad type"][:3] == [4, "x1", "ProtocolError"]
    assert seen["unknown"][:3] == [4, "u1", "NotImplemented"]
    assert seen["type"][:3] == [4, "s1", "FormationViolation"]
    assert seen["schema"][:3] == [4, "s2", "TypeConstraintViolation"]
    assert seen["missing"][:3] == [4, "s3", "OccurenceConstraintViolation"]
    assert seen["enum"][:3] == [4, "s4", "PropertyConstraintViolation"]
    assert seen["no tx"] == [3, "mv", {}]
    assert seen["heartbeat"][:2] == [3, "h1"] and "currentTime" in seen["heartbeat"][2]
    assert seen["again"] == seen["heartbeat"]
    assert seen["10 MB"] == 1009  # message too big: that connection closed
    # the other charger was never disturbed: its readings go on, and the gateway too
    count = len(observer.of(m.Telemetry, driver_id="D-3"))
    observer.wait(m.Telemetry, count=count + 2, driver_id="D-3", final=False)
    assert net.current_state("CP-02") == "Suministrando"

    async def crowd() -> int:
        # 200 TCP connections that never finish the handshake (held open together), and
        # WebSockets that open and never boot (each replacing the one before: one CP id,
        # one socket; each a registration with central and its end)
        raw = [await asyncio.open_connection("127.0.0.1", net.gateway_port)
               for _ in range(200)]
        opened = 0
        for _ in range(20):
            await _open(net, "CP-01")
            opened += 1
        for _, writer in raw:
            writer.close()
        return opened

    assert asyncio.run(crowd()) == 20
    ticket = observer.wait(m.Ticket, driver_id="D-3", timeout=30)[0]
    assert ticket.consumo_kwh > 0 and ticket.reason is m.EndReason.FINISHED
    assert gateway.popen.poll() is None



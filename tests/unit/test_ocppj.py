"""OCPP-J framing and schema checks (evc/ocpp/ocppj.py) and the meaning of a charger's
words (evc/ocpp/meter.py): pure, no socket."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evc.central import admin
from evc.ocpp import meter, ocppj
from evc.ocpp.ocppj import Call, CallError, CallResult, OcppError
from evc.ocpp.server import basic_password, charger_id
from evc.protocol import auth
from evc.protocol.codes import EndReason


def code_of(text: str) -> tuple[str, str]:
    with pytest.raises(OcppError) as info:
        frame = ocppj.parse(text)
        assert isinstance(frame, Call)
        ocppj.check(frame.action, frame.payload, unique_id=frame.unique_id)
    return info.value.code, info.value.unique_id


def test_the_three_frames():
    assert ocppj.parse('[2,"a","Heartbeat",{}]') == Call("a", "Heartbeat", {})
    assert ocppj.parse('[3,"b",{"status":"Accepted"}]') == CallResult("b", {"status": "Accepted"})
    assert ocppj.parse('[4,"c","GenericError","no",{}]') == CallError("c", "GenericError", "no")


@pytest.mark.parametrize("text, code, unique_id", [
    ("not json", "ProtocolError", "-1"),
    ('{"a": 1}', "ProtocolError", "-1"),
    ("[]", "ProtocolError", "-1"),
    ('[7, "x", "Heartbeat", {}]', "ProtocolError", "x"),
    ('[true, "x", "Heartbeat", {}]', "ProtocolError", "x"),
    ('[2, 5, "Heartbeat", {}]', "ProtocolError", "-1"),
    ('[2, "' + "i" * 37 + '", "Heartbeat", {}]', "ProtocolError", "-1"),
    ('[2, "x", "Heartbeat"]', "ProtocolError", "x"),
    ('[2, "x", "MakeCoffee", {}]', "NotImplemented", "x"),
    ('[2, "x", "Heartbeat", []]', "FormationViolation", "x"),
    ('[2, "x", "Heartbeat", {"extra": 1}]', "FormationViolation", "x"),
    ('[2, "x", "StatusNotification", {"connectorId": "1", "errorCode": "NoError", '
     '"status": "Available"}]', "TypeConstraintViolation", "x"),
    ('[2, "x", "Authorize", {"idTag": "' + "A" * 21 + '"}]', "TypeConstraintViolation", "x"),
    ('[2, "x", "StartTransaction", {"connectorId": 1}]', "OccurenceConstraintViolation", "x"),
    ('[2, "x", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", '
     '"status": "Sleeping"}]', "PropertyConstraintViolation", "x"),
])
def test_what_breaks_gets_the_specifications_code(text, code, unique_id):
    assert code_of(text) == (code, unique_id)


def test_a_valid_payload_passes_and_answers_are_checked_too():
    ocppj.check("BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"})
    ocppj.check("RemoteStartTransaction", {"status": "Accepted"}, response=True)
    with pytest.raises(OcppError) as info:
        ocppj.check("RemoteStartTransaction", {"status": "Maybe"}, response=True)
    assert info.value.code == "PropertyConstraintViolation"


def test_encoded_frames_are_ocpp_j():
    assert json.loads(ocppj.encode_call("1", "Reset", {"type": "Soft"})) == [
        2, "1", "Reset", {"type": "Soft"}]
    assert json.loads(ocppj.encode_result("1", {})) == [3, "1", {}]
    error = OcppError("NotImplemented", "x" * 300, "9")
    assert json.loads(ocppj.encode_error(error)) == [4, "9", "NotImplemented", "x" * 255, {}]


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                              lambda c: st.lists(c, max_size=5)
                              | st.dictionaries(st.text(max_size=5), c, max_size=5),
                              max_leaves=20).map(json.dumps)))
def test_nothing_received_raises_anything_but_an_ocpp_error(text):
    try:
        frame = ocppj.parse(text)
        if isinstance(frame, Call):
            ocppj.check(frame.action, frame.payload, unique_id=frame.unique_id)
    except OcppError as exc:
        assert exc.code in ("ProtocolError", "NotImplemented", "FormationViolation",
                            "TypeConstraintViolation", "OccurenceConstraintViolation",
                            "PropertyConstraintViolation")


def test_meter_readings_in_wh_or_kwh_and_power():
    values = [{"timestamp": "t", "sampledValue": [
        {"value": "1500"},  # Energy.Active.Import.Register in Wh, the defaults
        {"value": "7.4", "measurand": "Power.Active.Import", "unit": "kW"}]},
        {"timestamp": "t2", "sampledValue": [
            {"value": "1.6", "unit": "kWh", "measurand": "Energy.Active.Import.Register"},
            {"value": "230", "measurand": "Voltage", "unit": "V"},
            {"value": "800", "measurand": "Energy.Active.Import.Register", "phase": "L1"},
            {"value": "NaN"}]}]
    got = meter.reading(values)
    assert got.wh == 1600 and got.kw == 7.4
    assert meter.reading([]) == meter.Reading()
    assert meter.reading([{"sampledValue": [{"value": "x"}]}]).wh is None


def test_stop_reasons_become_the_tickets():
    assert meter.end_reason("EVDisconnected", None) is EndReason.UNPLUGGED
    assert meter.end_reason(None, None) is EndReason.LOCAL  # OCPP's default
    assert meter.end_reason("Remote", None) is EndReason.FINISHED
    assert meter.end_reason("Remote", EndReason.STOPPED) is EndReason.STOPPED
    assert meter.end_reason("PowerLoss", None) is EndReason.POWER_LOSS
    assert meter.end_reason("SoftReset", None) is EndReason.RESET
    assert meter.end_reason("Martian", None) is EndReason.OTHER


def test_handshake_pieces():
    assert charger_id("/CP-07") == "CP-07"
    assert charger_id("/ocpp/central/CP-07/?x=1") == "CP-07"
    assert charger_id("/CP%2D07") == "CP-07"

    def header(value: str):
        return {"Authorization": value}

    import base64
    token = base64.b64encode(b"CP-07:secret:with:colons").decode()
    assert basic_password(header(f"Basic {token}"), "CP-07") == "secret:with:colons"
    assert basic_password(header(f"Basic {token}"), "CP-08") is None  # another user
    assert basic_password(header("Basic !!!"), "CP-07") is None
    assert basic_password(header("Bearer x"), "CP-07") is None
    assert basic_password({}, "CP-07") is None


def test_the_password_is_derived_from_the_credential():
    secret = "ab" * 32
    password = auth.ocpp_password(secret, "CP-07")
    assert len(password) == 20 and password.isalnum()
    assert password == auth.ocpp_password(secret, "CP-07")
    assert password != auth.ocpp_password(secret, "CP-08")
    assert password != auth.ocpp_password("cd" * 32, "CP-07")


def test_the_consoles_ocpp_commands():
    parse = admin.parse_command
    assert parse("ocpp CP-07 reset soft") == admin.Ocpp("CP-07", "Reset", "Soft")
    assert parse("ocpp CP-07 reset HARD") == admin.Ocpp("CP-07", "Reset", "Hard")
    assert parse("ocpp CP-07 trigger statusnotification") == admin.Ocpp(
        "CP-07", "TriggerMessage", "StatusNotification")
    assert parse("ocpp CP-07 get") == admin.Ocpp("CP-07", "GetConfiguration", "")
    assert parse("ocpp CP-07 get HeartbeatInterval") == admin.Ocpp(
        "CP-07", "GetConfiguration", "HeartbeatInterval")
    assert parse("ocpp CP-07 set HeartbeatInterval=60") == admin.Ocpp(
        "CP-07", "ChangeConfiguration", "HeartbeatInterval=60")
    assert parse("ocpp-password CP-07") == admin.OcppPassword("CP-07")
    for bad in ("ocpp", "ocpp CP-07", "ocpp CP-07 reset", "ocpp CP-07 reset warm",
                "ocpp CP-07 trigger Coffee", "ocpp CP-07 set novalue", "ocpp-password",
                "ocpp bad! reset soft"):
        with pytest.raises(admin.CommandError):
            parse(bad)


def test_an_ocpp_chargers_row_is_marked_with_its_own_status():
    import time

    from evc.netview import detail
    from evc.protocol import messages as m

    def row(state, text):
        return detail(m.CPStatus(cp_id="OC-1", location="x", price_eur_kwh=0.3, state=state,
                                 detail=text, via="ocpp", kw=22.0, last_seen=time.time() - 5),
                      time.time())

    assert row(m.CPState.SUMINISTRANDO, "Charging") == "[OCPP Charging] in use, 22.0 kW"
    assert row(m.CPState.ACTIVADO, "Available") == "[OCPP Available]"
    assert row(m.CPState.AVERIADO, "charger Faulted (GroundFailure)") == \
        "[OCPP] charger Faulted (GroundFailure)"
    assert row(m.CPState.DESCONECTADO, "") == "[OCPP] last seen 5 s ago"

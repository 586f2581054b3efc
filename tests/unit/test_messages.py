import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evc.errors import ProtocolError
from evc.protocol import messages as m

SAMPLES = [
    m.Register(cp_id="CP-01", location="C/Italia 5"),
    m.RegisterAccepted(cp_id="CP-01", location="C/Italia 5", price_eur_kwh=0.35),
    m.RegisterRejected(cp_id="CP-99", reason="unknown", code=m.RejectCode.UNKNOWN),
    m.Heartbeat(cp_id="CP-01"),
    m.HeartbeatAck(cp_id="CP-01"),
    m.FaultReport(cp_id="CP-01", reason="KO"),
    m.RecoveryReport(cp_id="CP-01"),
    m.ErrorFrame(reason="bad frame"),
    m.HealthCheck(cp_id="CP-01"),
    m.Challenge(cp_id="CP-01", nonce="ab12"),
    m.Prove(cp_id="CP-01", proof="cd34"),
    m.EngineKey(cp_id="CP-01", client_nonce="a1", server_nonce="b2", key_id="c3"),
    m.HealthReply(cp_id="CP-01", status=m.Health.KO),
    m.ChargeRequest(driver_id="D-23", cp_id="CP-01"),
    m.EndRequest(driver_id="D-23", cp_id="CP-01", session_id="s1"),
    m.Telemetry(cp_id="CP-01", driver_id="D-23", consumo_kwh=1.5, importe_eur=0.52),
    m.StartSupply(cp_id="CP-01", driver_id="D-23", session_id="s1", price_eur_kwh=0.35),
    m.EndSupply(cp_id="CP-01", session_id="s1", reason=m.EndReason.FINISHED),
    m.StopCP(cp_id="CP-01"),
    m.ResumeCP(cp_id="CP-01"),
    m.ChargerCommand(cp_id="CP-01", action="Reset", arg="Soft"),
    m.ChargerStatus(cp_id="CP-01", status="Faulted", error_code="GroundFailure", info="x"),
    m.ChargerNote(cp_id="CP-01", note="Reset: Accepted"),
    m.Authorization(driver_id="D-23", cp_id="CP-01", request_id="r", authorized=True),
    m.Authorization(driver_id="D-23", cp_id="CP-01", request_id="r", authorized=False,
                    code=m.DenyCode.BUSY, reason="CP-01 is busy"),
    m.Ticket(driver_id="D-23", cp_id="CP-01", session_id="s1", consumo_kwh=2.0,
             importe_eur=0.7, price_eur_kwh=0.35, started_at=1.0, ended_at=9.0,
             reason=m.EndReason.FAULT),
    m.CentralStatus(central="pc2 pid 7", started_at=1.0),
    m.CPStatus(cp_id="CP-01", location="C/Italia 5", price_eur_kwh=0.35,
               state=m.CPState.AVERIADO, detail="engine answered KO"),
    m.EngineOpen(cp_id="CP-01"),
    m.SetPower(cp_id="CP-01", session_id="s1", kw=7.5, seq=3),
    m.OperatorCommand(operator="ana", command="stop CP-01", source="127.0.0.1"),
    m.StandbyStatus(central="pc4:5000 pid 9", active="pc2:5000 pid 7"),
    m.OperatorAnswer(operator="ana", request_id="r1", ok=False, text="unknown charge point",
                     code="failed"),
    m.SiteStatus(site="P1", limit_kw=30.0, load_kw=22.5, supplies=3, waiting=1),
    m.EngineRefused(cp_id="CP-01", refused="an unsigned start order", session_id="s1"),
    m.PairStart(cp_id="CP-01", pake="41" * 33),
    m.PairChallenge(cp_id="CP-01", pake="42" * 33),
    m.PairProve(cp_id="CP-01", confirm="ab" * 32),
    m.PairAccepted(cp_id="CP-01", confirm="cd" * 32),
    m.PairRejected(cp_id="CP-01", reason="wrong pairing code"),
    m.DriverPair(driver_id="D-23", pake="41" * 33),
    m.DriverPairChallenge(driver_id="D-23", request_id="r", pake="42" * 33),
    m.DriverPairProve(driver_id="D-23", request_id="r", confirm="ab" * 32),
    m.DriverPairResult(driver_id="D-23", request_id="r", ok=False, reason="expired"),
]


def test_every_message_type_has_a_sample():
    assert {type(s).TYPE for s in SAMPLES} == set(m.message_types())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: s.TYPE)
def test_round_trip(msg):
    wire = msg.to_wire()
    assert wire["type"] == msg.TYPE
    assert isinstance(wire["msg_id"], str) and isinstance(wire["ts"], float)
    assert m.from_wire(wire) == msg


def test_seed_keys_exactly():
    req = m.ChargeRequest(driver_id="D-23", cp_id="CP-01").to_wire()
    assert req["driver_id"] == "D-23" and req["cp_id_solicitado"] == "CP-01"
    assert "cp_id" not in req
    tel = m.Telemetry(cp_id="CP-01", driver_id="D-23", consumo_kwh=1.5, importe_eur=0.5).to_wire()
    assert {"cp_id", "driver_id", "consumo_kwh", "importe_eur"} <= set(tel)


def test_ids_are_unique():
    assert len({m.Heartbeat(cp_id="a").msg_id for _ in range(1000)}) == 1000


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.Heartbeat(cp_id="a").cp_id = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"type": "nope"}, "unknown message type"),
        ({"type": "heartbeat"}, "missing key 'cp_id'"),
        ({"type": "heartbeat", "cp_id": 5}, "expected a string"),
        ({"type": "telemetry", "cp_id": "a", "driver_id": "d", "consumo_kwh": "x",
          "importe_eur": 1}, "expected a number"),
        ({"type": "telemetry", "cp_id": "a", "driver_id": "d", "consumo_kwh": True,
          "importe_eur": 1}, "expected a number"),
        ({"type": "health", "cp_id": "a", "status": "MAYBE"}, "not one of"),
        ({"type": "register", "cp_id": "has space"}, "bad cp_id"),
        ({"type": "register", "cp_id": ""}, "bad cp_id"),
        ({"type": "authorization", "driver_id": "d", "cp_id": "c", "request_id": "r",
          "authorized": "yes"}, "true/false"),
        ({"type": "heartbeat", "cp_id": "a", "ts": 10**400}, "too large"),
        ({"type": "heartbeat", "cp_id": "a", "ts": float("inf")}, "finite"),
        ({"type": "heartbeat", "cp_id": "a", "ts": float("nan")}, "finite"),
        ({"type": "register", "cp_id": "CP-01", "location": "x\x1b[2J"}, "control"),
        ({"type": "register", "cp_id": "CP\x1b[31m"}, "bad cp_id"),
        ({"type": "register", "cp_id": "C" * 65}, "bad cp_id"),
        ({"type": "heartbeat", "cp_id": "a", "msg_id": "no spaces please"}, "bad msg_id"),
        ({"type": "heartbeat", "cp_id": ["a"]}, "expected a string"),
        ({"type": ["heartbeat"]}, "no string 'type'"),
    ],
)
def test_bad_messages(obj, message):
    with pytest.raises(ProtocolError, match=message):
        m.from_wire(obj)


def test_parse_insists_on_the_class():
    with pytest.raises(ProtocolError, match="expected 'register'"):
        m.parse(m.Heartbeat(cp_id="a").to_wire(), m.Register)


def test_poison_json_from_the_wire():
    """The shapes that once killed a thread: decoded, they are only ever ProtocolError."""
    from evc.bus import decode

    for raw in (b'{"type":"heartbeat","cp_id":"a","ts":' + b"9" * 400 + b"}",
                b'{"type":"heartbeat","cp_id":"a","ts":1e999}',
                b"[" * 100_000 + b"]" * 100_000,
                b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                b'"just a string"', b"[1,2]", b"\xff\xfe", b"", b"null",
                b'{"type":"heartbeat","cp_id":"a","ts":' + b"1" * 5000 + b"}"):
        with pytest.raises(ProtocolError):
            decode(raw)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=20)
KEYS = st.sampled_from(["type", "cp_id", "driver_id", "ts", "msg_id", "consumo_kwh",
                        "importe_eur", "session_id", "final", "reason", "location", "health",
                        "status", "authorized", "cp_id_solicitado", "price_eur_kwh", "code"])


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from(sorted(m.message_types())), extra=st.dictionaries(KEYS, JSON))
def test_any_object_is_a_message_or_a_protocol_error(kind, extra):
    obj = {"type": kind, **extra}
    try:
        msg = m.from_wire(obj)
    except ProtocolError:
        return
    assert json.loads(json.dumps(msg.to_wire(), allow_nan=False))["type"] == kind

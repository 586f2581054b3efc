"""The brain's rules at the authenticated level (pure logic, fakes for the wire).

Who may register, whose requests count, which readings are believed, and what the
operator's credential commands change: each rule once, with the audit it leaves.
"""

from __future__ import annotations

import time

import pytest

from evc.central.events import ConnectionLost, MonitorFrame, OperatorLine
from evc.central.model import Settings, Wait
from evc.protocol import auth
from evc.protocol import messages as m
from evc.store import Store
from tests.fakes import FakeLink, FakeOutbox, OneEventBatches, RecordingView


class Keys:
    """Credentials handed out by central, as the files a monitor or driver would read."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    def write(self, ident: str, secret: str) -> str:
        self.files[ident] = secret
        return f"/creds/{ident}.key"

    def remove(self, ident: str) -> None:
        self.files.pop(ident, None)


class Audit:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def write(self, event: str, **fields) -> None:
        self.lines.append((event, fields))

    def of(self, event: str) -> list[dict]:
        return [f for e, f in self.lines if e == event]


@pytest.fixture
def secure(tmp_path):
    keys, audit = Keys(), Audit()
    outbox, link, view = FakeOutbox(), FakeLink(), RecordingView()
    brain = OneEventBatches(Store(tmp_path / "c.json"), outbox, link, view,
                            Settings(final_timeout=0.2, start_timeout=0.2, secure=True),
                            credentials=keys, audit=audit)
    brain.upsert_cp("CP-01", "Calle 1", 0.3)
    brain.upsert_driver("D-1")
    return brain, keys, audit, outbox, link, view


def challenge(brain, link, conn, cp="CP-01", nonce="a" * 32) -> m.Challenge:
    brain.apply(MonitorFrame(conn, "10.0.0.9:5000", m.Register(cp_id=cp, nonce=nonce)))
    sent = link.sent[-1][1]
    assert isinstance(sent, m.Challenge) and sent.cp_id == cp
    return sent


def register(brain, keys, link, conn=1, cp="CP-01", nonce="a" * 32) -> m.RegisterAccepted:
    """The whole handshake, as a monitor holding the CP's credential does it."""
    ch = challenge(brain, link, conn, cp, nonce)
    proof = auth.register_proof(keys.files[cp], cp, nonce, ch.nonce)
    brain.apply(MonitorFrame(conn, "10.0.0.9:5000", m.Prove(cp_id=cp, proof=proof)))
    ok = link.sent[-1][1]
    assert isinstance(ok, m.RegisterAccepted), ok
    assert ok.proof == auth.central_proof(keys.files[cp], cp, nonce, ch.nonce)
    return ok


def kafka_key(keys, link, cp="CP-01", nonce="a" * 32) -> str:
    ch = next(msg for _, msg in reversed(link.sent) if isinstance(msg, m.Challenge))
    return auth.kafka_key(keys.files[cp], nonce, ch.nonce)


def refusal(link) -> m.RegisterRejected:
    final = link.closed[-1][2]
    assert isinstance(final, m.RegisterRejected)
    return final


def test_credentials_are_issued_for_new_cps_and_drivers(secure):
    brain, keys, audit, *_ = secure
    assert set(keys.files) == {"CP-01", "D-1"}
    assert all(len(s) >= 32 for s in keys.files.values())
    assert {f["id"] for f in audit.of("credential")} == {"CP-01", "D-1"}
    assert brain.upsert_driver("D-1") is False  # registered already: same credential
    assert set(keys.files) == {"CP-01", "D-1"}


def test_a_monitor_that_proves_its_credential_is_accepted_and_shares_a_key(secure):
    brain, keys, audit, outbox, link, _ = secure
    ok = register(brain, keys, link)
    key = kafka_key(keys, link)
    assert ok.key_id == auth.key_id(key)
    assert brain.cps["CP-01"].state is m.CPState.ACTIVADO
    assert audit.of("registered")[-1]["key_id"] == ok.key_id
    order = outbox.of(m.ResumeCP)[-1]
    assert auth.verify(order, key)  # orders are signed with this registration's key


def test_a_wrong_proof_is_refused_and_audited(secure):
    brain, keys, audit, _, link, _ = secure
    challenge(brain, link, 1)
    brain.apply(MonitorFrame(1, "10.0.0.9:5000", m.Prove(cp_id="CP-01", proof="0" * 64)))
    assert refusal(link).code is m.RejectCode.AUTH
    assert brain.cps["CP-01"].state is m.CPState.DESCONECTADO
    assert audit.of("refused")[-1] == {"cp_id": "CP-01", "source": "10.0.0.9:5000",
                                        "code": "auth", "why": "wrong credential (an old "
                                        "one?); pair it again: `pair CP-01`"}


def test_a_register_without_nonce_or_a_revoked_credential_is_refused(secure):
    brain, keys, audit, _, link, _ = secure
    brain.apply(MonitorFrame(1, "p", m.Register(cp_id="CP-01")))
    assert refusal(link).code is m.RejectCode.AUTH
    assert "proves nothing" in audit.of("refused")[-1]["why"]
    brain.apply(OperatorLine("revoke CP-01"))
    assert "CP-01" not in keys.files
    brain.apply(MonitorFrame(2, "p", m.Register(cp_id="CP-01", nonce="b" * 32)))
    assert refusal(link).code is m.RejectCode.AUTH
    assert "revoked" in audit.of("refused")[-1]["why"]


def test_a_proof_for_a_cp_revoked_while_challenged_is_refused(secure):
    brain, keys, _, _, link, _ = secure
    ch = challenge(brain, link, 1)
    proof = auth.register_proof(keys.files["CP-01"], "CP-01", "a" * 32, ch.nonce)
    brain.apply(OperatorLine("revoke CP-01"))
    brain.apply(MonitorFrame(1, "p", m.Prove(cp_id="CP-01", proof=proof)))
    assert refusal(link).code is m.RejectCode.AUTH


def test_only_the_first_of_two_challenged_monitors_registers(secure):
    brain, keys, _, _, link, _ = secure
    ch1 = challenge(brain, link, 1, nonce="a" * 32)
    ch2 = challenge(brain, link, 2, nonce="b" * 32)
    secret = keys.files["CP-01"]
    brain.apply(MonitorFrame(1, "p", m.Prove(
        cp_id="CP-01", proof=auth.register_proof(secret, "CP-01", "a" * 32, ch1.nonce))))
    assert isinstance(link.sent[-1][1], m.RegisterAccepted)
    brain.apply(MonitorFrame(2, "p", m.Prove(
        cp_id="CP-01", proof=auth.register_proof(secret, "CP-01", "b" * 32, ch2.nonce))))
    assert refusal(link).code is m.RejectCode.DUPLICATE
    assert brain.cps["CP-01"].conn_id == 1


def test_a_connection_lost_while_challenged_forgets_the_challenge(secure):
    brain, _, _, _, link, _ = secure
    challenge(brain, link, 1)
    brain.apply(ConnectionLost(1, "p", "closed"))
    assert brain.challenges == {}


def signed_request(keys, driver="D-1", cp="CP-01") -> m.ChargeRequest:
    return auth.sign(m.ChargeRequest(driver_id=driver, cp_id=cp),
                     auth.driver_key(keys.files[driver]))


def test_requests_count_only_from_registered_drivers_with_their_signature(secure):
    brain, keys, audit, outbox, link, _ = secure
    register(brain, keys, link)
    dkey = auth.driver_key(keys.files["D-1"])

    brain.on_bus(m.ChargeRequest(driver_id="D-9", cp_id="CP-01"))
    unknown = outbox.of(m.Authorization)[-1]
    assert unknown.code is m.DenyCode.UNKNOWN_DRIVER and not unknown.mac

    brain.on_bus(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"))  # unsigned
    bad = outbox.of(m.Authorization)[-1]
    # unsigned: the driver's key is not the one central holds (it says how to pair)
    assert bad.code is m.DenyCode.BAD_PROOF and not bad.mac and "pair D-1" in bad.reason
    forged = auth.sign(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"), "ab" * 32)
    brain.on_bus(forged)
    assert outbox.of(m.Authorization)[-1].code is m.DenyCode.BAD_PROOF
    assert [f["code"] for f in audit.of("rejected")] == ["unknown_driver", "bad_proof",
                                                         "bad_proof"]

    brain.on_bus(signed_request(keys))
    ok = outbox.of(m.Authorization)[-1]
    assert ok.authorized and auth.verify(ok, dkey)
    start = outbox.of(m.StartSupply)[-1]
    assert auth.verify(start, kafka_key(keys, link))


def supplying(secure):
    brain, keys, _, outbox, link, _ = secure
    register(brain, keys, link)
    brain.on_bus(signed_request(keys))
    return outbox.of(m.StartSupply)[-1], kafka_key(keys, link)


def test_readings_are_believed_only_signed_with_the_cps_key_and_plausible(secure):
    brain, keys, audit, *_ = secure
    start, key = supplying(secure)
    session = brain.sessions[start.session_id]

    def reading(kwh, sign_with=key):
        t = m.Telemetry(cp_id="CP-01", driver_id="D-1", session_id=start.session_id,
                        consumo_kwh=kwh, importe_eur=0.0)
        return auth.sign(t, sign_with) if sign_with else t

    brain.on_bus(reading(0.5, sign_with=None))
    brain.on_bus(reading(0.5, sign_with="cd" * 32))
    brain.on_bus(reading(-1.0))
    brain.on_bus(reading(500.0))
    assert session.kwh == 0 and not session.supplying
    whys = [f["why"] for f in audit.of("rejected") if f["kind"] == "telemetry"]
    assert whys[:2] == ["not signed with the CP's key"] * 2
    assert "negative" in whys[2] and "more than the CP can supply" in whys[3]

    brain.on_bus(reading(0.5))
    assert session.kwh == 0.5 and session.eur == 0.15 and session.supplying


def test_an_end_request_needs_the_drivers_signature(secure):
    brain, keys, audit, outbox, *_ = secure
    start, _ = supplying(secure)
    end = m.EndRequest(driver_id="D-1", cp_id="CP-01", session_id=start.session_id)
    brain.on_bus(end)
    assert brain.sessions[start.session_id].end_reason is None
    assert audit.of("rejected")[-1]["kind"] == "end_request"
    brain.on_bus(auth.sign(end, auth.driver_key(keys.files["D-1"])))
    assert brain.sessions[start.session_id].end_reason is m.EndReason.FINISHED
    assert outbox.of(m.EndSupply)[-1].session_id == start.session_id


def test_an_end_ordered_under_a_key_the_engine_missed_is_ordered_again(secure):
    """The end of a supply was ordered under a registration's key that its engine may
    never have got (the monitor killed between registering and handing the key over):
    the next registration orders it again, under its own key, and awaits the final
    anew."""
    brain, keys, _, outbox, link, _ = secure
    start, key = supplying(secure)
    brain.on_bus(auth.sign(m.EndRequest(driver_id="D-1", cp_id="CP-01",
                                        session_id=start.session_id),
                           auth.driver_key(keys.files["D-1"])))
    first = outbox.of(m.EndSupply)[-1]
    assert auth.verify(first, key)
    brain.apply(ConnectionLost(1, "10.0.0.9:5000", "monitor killed"))
    register(brain, keys, link, conn=2, nonce="b" * 32)
    again = outbox.of(m.EndSupply)[-1]
    assert again.msg_id != first.msg_id and again.session_id == start.session_id
    assert again.reason is m.EndReason.FINISHED
    assert auth.verify(again, kafka_key(keys, link, nonce="b" * 32))
    session = brain.sessions[start.session_id]
    assert session.waiting is Wait.FINAL and session.deadline > time.monotonic()


def test_rotating_a_connected_cp_disconnects_it_and_bills_its_supply(secure):
    brain, keys, audit, _, link, view = secure
    start, _ = supplying(secure)
    old = keys.files["CP-01"]
    brain.apply(OperatorLine("rotate CP-01"))
    assert keys.files["CP-01"] != old
    assert refusal(link).code is m.RejectCode.AUTH and "rotated" in refusal(link).reason
    brain.apply(ConnectionLost(1, "p", "closed by central"))
    session = brain.sessions[start.session_id]
    assert session.end_reason is m.EndReason.DISCONNECTED
    assert any("credential rotated" in text for _, text in view.notes)
    # the new credential registers; the old one does not
    ch = challenge(brain, link, 2, cp="CP-01", nonce="d" * 32)
    brain.apply(MonitorFrame(2, "p", m.Prove(
        cp_id="CP-01", proof=auth.register_proof(old, "CP-01", "d" * 32, ch.nonce))))
    assert refusal(link).code is m.RejectCode.AUTH
    register(brain, keys, link, conn=3, nonce="c" * 32)


def test_driver_credentials_are_rotated_revoked_added_and_removed(secure):
    brain, keys, audit, outbox, link, view = secure
    register(brain, keys, link)
    old = keys.files["D-1"]
    brain.apply(OperatorLine("rotate D-1"))
    assert keys.files["D-1"] != old
    brain.on_bus(auth.sign(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"),
                           auth.driver_key(old)))
    assert outbox.of(m.Authorization)[-1].code is m.DenyCode.BAD_PROOF

    brain.apply(OperatorLine("revoke D-1"))
    assert "D-1" not in keys.files and brain.drivers["D-1"] == ""
    brain.on_bus(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"))
    assert outbox.of(m.Authorization)[-1].code is m.DenyCode.BAD_PROOF

    brain.apply(OperatorLine("add-driver D-2"))
    assert "D-2" in keys.files
    brain.apply(OperatorLine("add-driver D-2"))
    assert view.notes[-1][1] == "driver D-2 is registered already"
    brain.apply(OperatorLine("remove-driver D-2"))
    assert "D-2" not in keys.files and "D-2" not in brain.drivers
    assert [f["action"] for f in audit.of("credential") if f["id"] == "D-2"] == [
        "issued", "removed"]


def test_credential_commands_on_unknown_ids_change_nothing(secure):
    brain, keys, _, _, _, view = secure
    before = dict(keys.files)
    brain.apply(OperatorLine("rotate XX-9"))
    assert view.notes[-1][0] == "error"
    brain.apply(OperatorLine("remove-driver D-404"))
    assert view.notes[-1][0] == "error" and keys.files == before


def test_credentials_and_drivers_survive_a_restart(secure, tmp_path):
    brain, keys, *_ = secure
    brain.flush()
    brain.store.close()
    again = OneEventBatches(Store(tmp_path / "c.json"), FakeOutbox(), FakeLink(),
                            RecordingView(), Settings(secure=True), credentials=Keys())
    assert again.cps["CP-01"].secret == keys.files["CP-01"]
    assert again.drivers == {"D-1": keys.files["D-1"]}

"""Pairing codes and one trust level per CP (pure logic; the real SPAKE2, fakes for the wire).

What the code is and how typing it is forgiven, what a try costs, and what central does
with a monitor's or a driver's pairing messages; then the level rules: who is served
unproven, what is signed, and that nothing talks a proven CP down.
"""

from __future__ import annotations

import re

import pytest

from evc.central.events import MonitorFrame, OperatorLine
from evc.central.model import Settings
from evc.central.pairing import MAX_TRIES, Pairings, Refused
from evc.errors import ProtocolError
from evc.protocol import auth, pairing
from evc.protocol import messages as m
from evc.store import Store
from tests.fakes import FakeLink, FakeOutbox, OneEventBatches, RecordingView
from tests.unit.test_brain_trust import Audit, Keys, refusal, register

CODE = re.compile(r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}")


# ---------------------------------------------------------------------- the code


def test_a_code_is_two_groups_of_four_and_typing_is_forgiving():
    code = pairing.new_code()
    assert CODE.fullmatch(code)
    assert pairing.normalize(code.lower().replace("-", " ")) == code.replace("-", "")
    assert pairing.normalize("OIL0-1111") == "01101111"  # O, I, L read as 0, 1, 1
    for bad in ("", "ABC", "ABCD-EFGH-J", "ABCD-EFG!", "UUUU-UUUU"):
        with pytest.raises(ProtocolError):
            pairing.normalize(bad)


def exchange(code_client: str, code_central: str, ident: str = "CP-01"):
    client = pairing.PakeSide(code_client, ident, central=False)
    central = pairing.PakeSide(code_central, ident, central=True)
    return client.finish(central.outbound), central.finish(client.outbound)


def test_the_same_code_gives_the_same_key_and_another_one_does_not():
    a, b = exchange("7K2F-Q9XA", "7k2fq9xa")
    assert a == b and len(a) == 32
    assert pairing.credential(a, "CP-01") == pairing.credential(b, "CP-01")
    assert len(pairing.credential(a, "CP-01")) == 64
    c, d = exchange("7K2F-Q9XA", "7K2F-Q9XB")
    assert c != d
    e, f = exchange("7K2F-Q9XA", "7K2F-Q9XA", "CP-02")
    assert e == f != a  # bound to the id: a code for CP-01 does not pair CP-02


def test_a_garbage_element_is_a_protocol_error():
    side = pairing.PakeSide("7K2F-Q9XA", "CP-01", central=True)
    for junk in ("", "zz", "00" * 33, "41" * 33, side.outbound):  # the last: a reflection
        with pytest.raises(ProtocolError):
            pairing.PakeSide("7K2F-Q9XA", "CP-01", central=True).finish(junk)


# ---------------------------------------------------------------------- tries


def client_try(book: Pairings, token, code: str, ident="CP-01", now=0.0):
    client = pairing.PakeSide(code, ident, central=False)
    theirs = book.begin(token, ident, client.outbound, "10.0.0.9", now=now)
    key = client.finish(theirs)
    return key, pairing.client_confirm(key, ident)


def test_a_code_pairs_once():
    book = Pairings()
    code = book.issue("CP-01", now=0.0)
    key, confirm = client_try(book, 1, code)
    secret, central = book.finish(1, "CP-01", confirm, now=1.0)
    assert secret == pairing.credential(key, "CP-01")
    assert central == pairing.central_confirm(key, "CP-01")
    with pytest.raises(Refused, match="no pairing code"):  # used
        client_try(book, 2, code)
    with pytest.raises(Refused, match="no pairing of CP-01 in progress"):  # replayed
        book.finish(1, "CP-01", confirm, now=2.0)


def test_wrong_codes_count_and_the_fifth_try_is_the_last():
    book = Pairings()
    code = book.issue("CP-01", now=0.0)
    for n in range(1, MAX_TRIES):
        _, confirm = client_try(book, n, "0000-0000")
        with pytest.raises(Refused, match=f"{MAX_TRIES - n} tries left"):
            book.finish(n, "CP-01", confirm, now=1.0)
    _, confirm = client_try(book, 99, "0000-0000")
    with pytest.raises(Refused, match="used up"):
        book.finish(99, "CP-01", confirm, now=1.0)
    with pytest.raises(Refused, match="no pairing code"):  # dead, even with the right one
        client_try(book, 100, code)


def test_a_try_that_never_confirms_still_counts_and_garbage_too():
    book = Pairings()
    code = book.issue("CP-01", now=0.0)
    client_try(book, 1, "0000-0000")  # got central's element, walked away
    with pytest.raises(Refused, match="not a pairing message"):
        book.begin(2, "CP-01", "41" * 33, "x", now=0.0)
    assert book.codes["CP-01"].tries == 2
    _, confirm = client_try(book, 3, code)
    book.finish(3, "CP-01", confirm, now=1.0)


def test_an_expired_code_and_a_code_for_another_id_are_refused():
    book = Pairings()
    code = book.issue("CP-01", now=0.0)
    with pytest.raises(Refused, match="no pairing code for CP-02"):
        client_try(book, 1, code, ident="CP-02")
    with pytest.raises(Refused, match="expired"):
        client_try(book, 2, code, now=601.0)
    code = book.issue("CP-01", now=0.0)
    _, confirm = client_try(book, 3, code)
    with pytest.raises(Refused, match="in progress"):  # confirmed too late
        book.finish(3, "CP-01", confirm, now=120.0)


# ---------------------------------------------------------------------- central


def make(tmp_path, secure: bool):
    keys, audit = Keys(), Audit()
    outbox, link, view = FakeOutbox(), FakeLink(), RecordingView()
    brain = OneEventBatches(Store(tmp_path / "c.json"), outbox, link, view,
                            Settings(final_timeout=0.2, start_timeout=0.2, secure=secure),
                            credentials=keys, audit=audit)
    brain.upsert_cp("CP-01", "Calle 1", 0.3)
    brain.upsert_cp("CP-02", "Calle 2", 0.3)
    return brain, keys, audit, outbox, link, view


@pytest.fixture
def open_level(tmp_path):
    return make(tmp_path, secure=False)


def code_from(view) -> str:
    return CODE.search(view.notes[-1][1]).group(0)


def pair_cp(brain, link, code: str, conn=7, cp="CP-01") -> m.Message:
    """A monitor's side of the exchange, as `cp-monitor --pair CODE` runs it."""
    client = pairing.PakeSide(code, cp, central=False)

    def said() -> m.Message:
        if link.closed and link.closed[-1][0] == conn and len(link.closed) > closed:
            return link.closed[-1][2]
        assert link.sent[-1][0] == conn
        return link.sent[-1][1]

    closed = len(link.closed)
    brain.apply(MonitorFrame(conn, "10.0.0.5:4000", m.PairStart(cp_id=cp, pake=client.outbound)))
    answer = said()
    if not isinstance(answer, m.PairChallenge):
        return answer
    key = client.finish(answer.pake)
    brain.apply(MonitorFrame(conn, "10.0.0.5:4000", m.PairProve(
        cp_id=cp, confirm=pairing.client_confirm(key, cp))))
    done = said()
    if isinstance(done, m.PairAccepted):
        assert done.confirm == pairing.central_confirm(key, cp)
        assert brain.cps[cp].secret == pairing.credential(key, cp)
    return done


def test_a_cp_paired_over_tcp_then_registers_proven(open_level):
    brain, keys, audit, outbox, link, view = open_level
    assert keys.files == {}  # the open level makes no credential for the registry
    brain.apply(OperatorLine("pair CP-01"))
    code = code_from(view)
    assert "--pair" in view.notes[-1][1]
    assert isinstance(pair_cp(brain, link, code), m.PairAccepted)
    assert keys.files["CP-01"] == brain.cps["CP-01"].secret
    assert audit.of("pairing")[-1]["result"] == "paired"
    assert audit.of("pairing")[-1]["source"] == "10.0.0.5:4000"
    register(brain, keys, link, conn=7)  # on the same connection, with the new credential
    assert brain.cps["CP-01"].proven
    order = outbox.of(m.ResumeCP)[-1]
    assert order.mac  # signed at the open level too


def test_pairing_refusals_are_clear_audited_and_close_only_that_connection(open_level):
    brain, keys, audit, _, link, view = open_level
    assert "no pairing code" in pair_cp(brain, link, "7K2F-Q9XA").reason
    brain.apply(OperatorLine("pair CP-01"))
    code = code_from(view)
    wrong = pair_cp(brain, link, "0000-0000", conn=8)
    assert isinstance(wrong, m.PairRejected) and "wrong pairing code" in wrong.reason
    assert link.closed[-1][0] == 8
    assert "unknown" not in pair_cp(brain, link, code, conn=9, cp="CP-99").reason
    assert "not in central's registry" in link.closed[-1][2].reason
    assert [a["result"] for a in audit.of("pairing") if "result" in a] == ["refused"] * 3
    assert isinstance(pair_cp(brain, link, code, conn=10), m.PairAccepted)  # 2 tries used


def test_pair_asks_before_replacing_a_proven_credential(tmp_path):
    brain, keys, audit, _, link, view = make(tmp_path, secure=True)
    old = keys.files["CP-01"]
    brain.apply(OperatorLine("pair CP-02"))  # sprayed, never used: no question
    assert CODE.search(view.notes[-1][1])
    register(brain, keys, link, conn=1)
    brain.apply(OperatorLine("pair CP-01"))
    assert "pair CP-01 replace" in view.notes[-1][1] and not CODE.search(view.notes[-1][1])
    brain.apply(OperatorLine("pair CP-01 replace"))
    assert isinstance(pair_cp(brain, link, code_from(view), conn=5), m.PairAccepted)
    assert keys.files["CP-01"] != old
    assert link.closed[-1][0] == 1  # the monitor of the old credential is disconnected
    assert not brain.cps["CP-01"].proven  # until it registers with the new one


def test_a_driver_pairs_over_kafka(tmp_path):
    brain, keys, audit, outbox, _, view = make(tmp_path, secure=True)
    brain.apply(OperatorLine("pair D-23"))
    code = code_from(view)
    client = pairing.PakeSide(code, "D-23", central=False)
    request = m.DriverPair(driver_id="D-23", pake=client.outbound)
    brain.on_bus(request)
    answer = outbox.of(m.DriverPairChallenge)[-1]
    assert answer.request_id == request.msg_id and not answer.mac
    key = client.finish(answer.pake)
    brain.on_bus(m.DriverPairProve(driver_id="D-23", request_id=request.msg_id,
                                   confirm=pairing.client_confirm(key, "D-23")))
    result = outbox.of(m.DriverPairResult)[-1]
    assert result.ok and result.confirm == pairing.central_confirm(key, "D-23")
    secret = pairing.credential(key, "D-23")
    assert brain.drivers["D-23"] == secret == keys.files["D-23"]
    signed = auth.sign(m.ChargeRequest(driver_id="D-23", cp_id="CP-01"), auth.driver_key(secret))
    brain.on_bus(signed)
    assert outbox.of(m.Authorization)[-1].code is not m.DenyCode.UNKNOWN_DRIVER
    brain.on_bus(m.DriverPairProve(driver_id="D-23", request_id=request.msg_id,
                                   confirm=pairing.client_confirm(key, "D-23")))  # replayed
    assert not outbox.of(m.DriverPairResult)[-1].ok


# ---------------------------------------------------------------------- levels


def test_the_open_level_serves_a_cp_that_proves_nothing_unsigned(open_level):
    brain, keys, audit, outbox, link, _ = open_level
    brain.apply(MonitorFrame(1, "p", m.Register(cp_id="CP-01")))  # another team's monitor
    brain.apply(MonitorFrame(2, "p", m.Register(cp_id="CP-02", nonce="b" * 32)))  # evc's
    assert isinstance(link.sent[-1][1], m.RegisterAccepted)
    assert not brain.cps["CP-01"].proven and not brain.cps["CP-02"].proven
    assert not any(o.mac for o in outbox.of(m.ResumeCP))
    brain.on_bus(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"))  # unregistered, unsigned
    assert outbox.of(m.Authorization)[-1].authorized
    session = brain.cps["CP-01"].session
    brain.on_bus(m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=0.5, importe_eur=0.15,
                             session_id=session.session_id))
    assert session.kwh == 0.5  # an unproven CP's readings go unsigned


def test_a_cp_with_a_credential_is_challenged_and_proven_at_the_open_level(open_level):
    brain, keys, audit, outbox, link, view = open_level
    brain.apply(OperatorLine("pair CP-01"))
    pair_cp(brain, link, code_from(view))
    ch_conn = 3
    brain.apply(MonitorFrame(ch_conn, "p", m.Register(cp_id="CP-01", nonce="a" * 32)))
    ch = link.sent[-1][1]
    assert isinstance(ch, m.Challenge) and not ch.required  # never proven yet
    proof = auth.register_proof(keys.files["CP-01"], "CP-01", "a" * 32, ch.nonce)
    brain.apply(MonitorFrame(ch_conn, "p", m.Prove(cp_id="CP-01", proof=proof)))
    assert brain.cps["CP-01"].proven
    session = start(brain, outbox)
    unsigned = m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=0.5, importe_eur=0.15,
                           session_id=session.session_id)
    brain.on_bus(unsigned)
    assert session.kwh == 0.0  # a proven CP's readings must be signed
    assert audit.of("rejected")[-1]["why"] == "not signed with the CP's key"


def start(brain, outbox, driver="D-1", cp="CP-01"):
    brain.on_bus(m.ChargeRequest(driver_id=driver, cp_id=cp))
    assert outbox.of(m.Authorization)[-1].authorized, outbox.of(m.Authorization)[-1]
    return brain.cps[cp].session


def test_no_downgrade_a_proven_cp_is_never_served_unproven(open_level):
    brain, keys, audit, outbox, link, view = open_level
    brain.apply(OperatorLine("pair CP-01"))
    pair_cp(brain, link, code_from(view))
    register(brain, keys, link, conn=7)
    brain.apply(MonitorFrame(7, "p", m.FaultReport(cp_id="CP-01")))
    from evc.central.events import ConnectionLost
    brain.apply(ConnectionLost(7, "p", "gone"))
    # a stranger's monitor without the credential, in both shapes
    brain.apply(MonitorFrame(8, "10.6.6.6:1", m.Register(cp_id="CP-01")))
    assert refusal(link).code is m.RejectCode.AUTH
    brain.apply(MonitorFrame(9, "10.6.6.6:1", m.Register(cp_id="CP-01", nonce="c" * 32)))
    ch = link.sent[-1][1]
    assert isinstance(ch, m.Challenge) and ch.required
    brain.apply(MonitorFrame(9, "10.6.6.6:1", m.Prove(cp_id="CP-01")))  # "I hold none"
    assert refusal(link).code is m.RejectCode.AUTH
    assert "proved its credential before" in audit.of("refused")[-1]["why"]
    assert brain.cps["CP-01"].conn_id is None
    # the operator revokes it: from then on the open level may serve it unproven
    brain.apply(OperatorLine("revoke CP-01"))
    brain.apply(MonitorFrame(10, "p", m.Register(cp_id="CP-01")))
    assert isinstance(link.sent[-1][1], m.RegisterAccepted) and not brain.cps["CP-01"].proven


def test_an_engines_refusal_shows_and_ends_the_supply_it_will_never_start(open_level):
    brain, keys, audit, outbox, link, view = open_level
    brain.apply(MonitorFrame(1, "p", m.Register(cp_id="CP-01", nonce="a" * 32)))
    session = start(brain, outbox)
    brain.apply(MonitorFrame(1, "p", m.EngineRefused(
        cp_id="CP-01", refused="an unsigned start_supply order", session_id=session.session_id)))
    assert "CP-01's engine refused an unsigned start_supply order" in view.notes[-2][1] or \
        any("CP-01's engine refused an unsigned" in t for _, t in view.notes)
    assert audit.of("refused")[-1]["code"] == "engine"
    ticket = outbox.of(m.Ticket)[-1]
    assert ticket.reason is m.EndReason.REFUSED and ticket.consumo_kwh == 0.0
    assert brain.cps["CP-01"].session is None


def test_a_forged_order_refused_by_a_proven_engine_ends_nothing(tmp_path):
    brain, keys, audit, outbox, link, view = make(tmp_path, secure=True)
    register(brain, keys, link, conn=1)
    brain.upsert_driver("D-1")
    dkey = auth.driver_key(keys.files["D-1"])
    brain.on_bus(auth.sign(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"), dkey))
    session = brain.cps["CP-01"].session
    brain.apply(MonitorFrame(1, "p", m.EngineRefused(
        cp_id="CP-01", refused="an unsigned start_supply order", session_id=session.session_id)))
    assert brain.cps["CP-01"].session is session  # central signed its own: that one counts
    assert audit.of("refused")[-1]["code"] == "engine"


def test_a_driver_with_a_credential_signs_at_the_open_level_too(open_level):
    brain, keys, audit, outbox, link, view = open_level
    brain.apply(OperatorLine("add-driver D-5"))  # asked to register: a credential
    assert "D-5" in keys.files
    brain.apply(MonitorFrame(1, "p", m.Register(cp_id="CP-01")))
    brain.on_bus(m.ChargeRequest(driver_id="D-5", cp_id="CP-01"))  # unsigned, in its name
    denied = outbox.of(m.Authorization)[-1]
    assert denied.code is m.DenyCode.BAD_PROOF and "pair D-5" in denied.reason
    assert not denied.mac
    brain.on_bus(auth.sign(m.ChargeRequest(driver_id="D-5", cp_id="CP-01"),
                           auth.driver_key(keys.files["D-5"])))
    ok = outbox.of(m.Authorization)[-1]
    assert ok.authorized and auth.verify(ok, auth.driver_key(keys.files["D-5"]))

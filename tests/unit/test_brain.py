"""The brain's rules, one event at a time, with fakes for the wire (pure logic)."""

from __future__ import annotations

import time

import pytest

from evc.central.brain import Brain
from evc.central.events import (
    BusMessage,
    ConnectionLost,
    Heartbeats,
    MonitorFrame,
    OperatorLine,
)
from evc.central.model import Settings, Wait
from evc.protocol import messages as m
from evc.protocol.topics import Delivery
from evc.store import Store, read_database
from tests.fakes import FakeLink, FakeOutbox, OneEventBatches, RecordingView


@pytest.fixture
def parts(tmp_path):
    store = Store(tmp_path / "c.json")
    outbox, link, view = FakeOutbox(), FakeLink(), RecordingView()
    brain = OneEventBatches(store, outbox, link, view,
                            Settings(final_timeout=0.2, start_timeout=0.2, secure=False))
    for i in (1, 2):
        brain.upsert_cp(f"CP-0{i}", f"Calle {i}", 0.3)
    return brain, store, outbox, link, view


def settle(brain, outbox, ok=True):
    """Kafka answers every send; the brain applies those answers (as its loop would)."""
    outbox.confirm_all(ok)
    while not brain.events.empty():
        brain.apply(brain.events.get_nowait())
    brain.flush()


def expire(brain):
    """Move every pending deadline into the past (no sleeping in tests)."""
    for session in brain.sessions.values():
        if session.deadline:
            session.deadline = time.monotonic() - 1


def register(brain, conn, cp, health=m.Health.OK):
    brain.apply(MonitorFrame(conn, "peer", m.Register(cp_id=cp, location="", health=health)))


def state(brain, cp):
    return brain.cps[cp].state


def test_register_fault_recover_lose(parts):
    brain, _, outbox, link, _ = parts
    register(brain, 1, "CP-01")
    assert state(brain, "CP-01") is m.CPState.ACTIVADO
    assert isinstance(link.sent[-1][1], m.RegisterAccepted)
    assert isinstance(outbox.sent[-1][1], m.ResumeCP)
    brain.apply(MonitorFrame(1, "peer", m.FaultReport(cp_id="CP-01", reason="KO")))
    assert state(brain, "CP-01") is m.CPState.AVERIADO
    brain.apply(MonitorFrame(1, "peer", m.RecoveryReport(cp_id="CP-01")))
    assert state(brain, "CP-01") is m.CPState.ACTIVADO
    brain.apply(ConnectionLost(1, "peer", "closed"))
    assert state(brain, "CP-01") is m.CPState.DESCONECTADO


def test_heartbeats_reported_together_mark_each_monitor_seen(parts):
    brain, _, _, link, _ = parts
    register(brain, 1, "CP-01")
    register(brain, 2, "CP-02")
    brain.cps["CP-01"].last_seen = brain.cps["CP-02"].last_seen = 5.0
    brain.apply(Heartbeats(((1, "CP-01"), (2, "CP-02"), (99, "CP-01")), at=1234.5))
    assert brain.cps["CP-01"].last_seen == brain.cps["CP-02"].last_seen == 1234.5
    assert not link.closed  # conn 99 is gone (or never was): its beat says nothing
    # a registered connection that beats for another CP is closed, like any other frame
    brain.apply(Heartbeats(((2, "CP-01"),), at=1240.0))
    assert link.closed[-1][0] == 2 and link.closed[-1][2].code is m.RejectCode.PROTOCOL
    assert brain.cps["CP-01"].last_seen == 1234.5


def test_registration_with_engine_ko_is_averiado(parts):
    brain = parts[0]
    register(brain, 1, "CP-01", m.Health.KO)
    assert state(brain, "CP-01") is m.CPState.AVERIADO


def test_unknown_and_duplicate_registrations(parts):
    brain, _, _, link, _ = parts
    register(brain, 1, "CP-99")
    assert link.closed[-1][2].code is m.RejectCode.UNKNOWN
    register(brain, 2, "CP-01")
    register(brain, 3, "CP-01")
    assert link.closed[-1][2].code is m.RejectCode.DUPLICATE
    assert brain.cps["CP-01"].conn_id == 2
    brain.apply(ConnectionLost(3, "peer", "closed"))  # the refused one going away
    assert state(brain, "CP-01") is m.CPState.ACTIVADO


def test_a_connection_cannot_speak_for_another_cp(parts):
    brain, _, _, link, _ = parts
    register(brain, 1, "CP-01")
    brain.apply(MonitorFrame(1, "peer", m.FaultReport(cp_id="CP-02")))
    assert link.closed[-1][0] == 1
    assert state(brain, "CP-02") is m.CPState.DESCONECTADO


def authorize(brain, outbox, driver="D-1", cp="CP-01"):
    req = m.ChargeRequest(driver_id=driver, cp_id=cp)
    brain.on_bus(req)
    return [a for a in outbox.of(m.Authorization) if a.request_id == req.msg_id][0]


def test_supply_lifecycle_and_exactly_one_ticket(parts):
    brain, store, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    auth = authorize(brain, outbox)
    assert auth.authorized and state(brain, "CP-01") is m.CPState.SUMINISTRANDO
    start = outbox.of(m.StartSupply)[-1]
    assert start.session_id == auth.session_id and start.price_eur_kwh == 0.3
    def tele(kwh, final=False, reason=""):
        return m.Telemetry(
            cp_id="CP-01", driver_id="D-1", consumo_kwh=kwh, importe_eur=round(kwh * 0.3, 2),
            session_id=auth.session_id, final=final, reason=reason)
    brain.on_bus(tele(0.5))
    brain.on_bus(m.EndRequest(driver_id="D-1", cp_id="CP-01", session_id=auth.session_id))
    assert outbox.of(m.EndSupply)[-1].reason is m.EndReason.FINISHED
    brain.on_bus(tele(1.0, final=True, reason="finished"))
    brain.on_bus(tele(1.0, final=True, reason="finished"))  # duplicate final
    tickets = outbox.of(m.Ticket)
    assert len(tickets) == 1 and tickets[0].consumo_kwh == 1.0 and tickets[0].importe_eur == 0.3
    assert state(brain, "CP-01") is m.CPState.ACTIVADO
    store.commit()
    assert store.get_session(auth.session_id)["status"] == "closed"


def test_readings_reach_the_changelog_late_and_a_bare_reading_brings_them(parts):
    """How far a supply's readings were read may reach the replica late (a central taking
    over reads them again: a reading only raises its session's figures, and a final one
    finds its session closed, the close replicated at once). A reading in the seed's bare
    shape must never be read twice: in that partition it brings the late changes along,
    offsets and figures together. A record of another partition (a request) does not: the
    sessions it changes go whole."""
    from evc.protocol.topics import Delivery

    brain, store, outbox, _, _ = parts
    store.late_every = 3600
    seen: dict[str, str | None] = {}
    store.replica = lambda changes: seen.update(changes)
    brain.upsert_cp("CP-03", "Calle 3", 0.3)
    register(brain, 1, "CP-01")
    register(brain, 2, "CP-02")
    register(brain, 3, "CP-03")
    auth = authorize(brain, outbox)
    other = authorize(brain, outbox, driver="D-3", cp="CP-03")
    brain.flush()

    def reading(offset, kwh, final=False, session=auth.session_id, cp="CP-01", driver="D-1"):
        brain.apply(BusMessage(m.Telemetry(
            cp_id=cp, driver_id=driver, consumo_kwh=kwh, importe_eur=round(kwh * 0.3, 2),
            session_id=session, final=final, reason="finished" if final else ""),
            Delivery("t", 0, offset)))
        brain.flush()

    key, other_key = f"sessions/{auth.session_id}", f"sessions/{other.session_id}"
    reading(0, 0.5)
    reading(1, 1.0)
    reading(2, 0.2, session=other.session_id, cp="CP-03", driver="D-3")
    assert '"consumo_kwh":0.0' in seen[key] and "offsets/t:0" not in seen  # late
    brain.apply(BusMessage(m.ChargeRequest(driver_id="D-2", cp_id="CP-02"),
                           Delivery("r", 0, 0)))
    brain.flush()
    assert "offsets/r:0" in seen and '"consumo_kwh":0.0' in seen[key]  # still late
    reading(3, 2.0, final=True)  # closed at once, its offset late with the others'
    assert '"status":"closed"' in seen[key] and '"consumo_kwh":2.0' in seen[key]
    assert "offsets/t:0" not in seen and '"consumo_kwh":0.0' in seen[other_key]
    reading(4, 0.3, session="", cp="CP-03", driver="D-3")  # bare: never read twice
    assert '"next":5' in seen["offsets/t:0"] and '"consumo_kwh":0.3' in seen[other_key]


@pytest.mark.parametrize("event, reason, after", [
    ("fault", m.EndReason.FAULT, m.CPState.AVERIADO),
    ("lost", m.EndReason.DISCONNECTED, m.CPState.DESCONECTADO),
    ("stop", m.EndReason.STOPPED, m.CPState.PARADO),
])
def test_every_exit_from_a_supply_tickets_the_driver(parts, event, reason, after):
    brain, _, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    auth = authorize(brain, outbox)
    brain.on_bus(m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=2.0, importe_eur=0.6,
                             session_id=auth.session_id))
    if event == "fault":
        brain.apply(MonitorFrame(1, "p", m.FaultReport(cp_id="CP-01")))
    elif event == "lost":
        brain.apply(ConnectionLost(1, "p", "gone"))
    else:
        brain.apply(OperatorLine("parar CP-01"))
    assert state(brain, "CP-01") is after
    assert outbox.of(m.EndSupply)[-1].reason is reason
    assert not outbox.of(m.Ticket)
    expire(brain)  # the engine never sent its final figures
    brain.tick()
    ticket = outbox.of(m.Ticket)
    assert len(ticket) == 1 and ticket[0].reason is reason and ticket[0].consumo_kwh == 2.0


def test_engine_that_never_starts(parts):
    brain, _, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    authorize(brain, outbox)
    expire(brain)
    brain.tick()  # start deadline passed, no figure ever came: ended and ticketed now
    assert outbox.of(m.EndSupply)[-1].reason is m.EndReason.NO_ENGINE
    assert outbox.of(m.Ticket)[0].reason is m.EndReason.NO_ENGINE
    assert state(brain, "CP-01") is m.CPState.ACTIVADO


def test_refusals(parts):
    brain, _, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    register(brain, 2, "CP-02")
    assert authorize(brain, outbox, "D-1", "CP-01").authorized
    assert "busy" in authorize(brain, outbox, "D-2", "CP-01").reason
    assert "already has a supply" in authorize(brain, outbox, "D-1", "CP-02").reason
    assert "unknown" in authorize(brain, outbox, "D-3", "CP-77").reason
    old = m.ChargeRequest(driver_id="D-4", cp_id="CP-02", ts=time.time() - 3600)
    brain.on_bus(old)
    assert "expired" in outbox.of(m.Authorization)[-1].reason


def restarted(tmp_path, **settings):
    store = Store(tmp_path / "c.json")
    out = FakeOutbox()
    brain = OneEventBatches(store, out, FakeLink(), RecordingView(),
                            Settings(final_timeout=0.2, secure=False, **settings))
    return brain, store, out


def test_restart_resumes_open_sessions_and_starts_disconnected(parts, tmp_path):
    brain, store, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    brain.apply(OperatorLine("stop CP-02"))
    auth = authorize(brain, outbox)
    brain.on_bus(m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=1.5,
                             importe_eur=0.45, session_id=auth.session_id))
    settle(brain, outbox)
    store.close()
    again, _, out2 = restarted(tmp_path)
    assert all(cp.state is m.CPState.DESCONECTADO for cp in again.cps.values())
    assert again.cps["CP-02"].stopped
    assert not out2.of(m.EndSupply)  # the supply goes on: the CP kept supplying
    session = again.sessions[auth.session_id]
    assert session.kwh == 1.5 and session.waiting is Wait.MONITOR
    session.started_at -= 60  # it has been supplying a minute (3 kWh is plausible)
    register(again, 7, "CP-01")
    assert state(again, "CP-01") is m.CPState.SUMINISTRANDO and session.waiting is None
    again.on_bus(m.EndRequest(driver_id="D-1", cp_id="CP-01", session_id=auth.session_id))
    again.on_bus(m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=3.0,
                             importe_eur=0.9, session_id=auth.session_id, final=True))
    ticket = out2.of(m.Ticket)
    assert len(ticket) == 1 and ticket[0].consumo_kwh == 3.0 and ticket[0].importe_eur == 0.9
    assert ticket[0].reason is m.EndReason.FINISHED
    # the same request delivered again after the restart is not answered twice
    again.on_bus(m.ChargeRequest(driver_id="D-1", cp_id="CP-01", msg_id=auth.request_id))
    assert not out2.of(m.Authorization)


def test_restart_ends_supplies_whose_monitor_never_returns(parts, tmp_path):
    brain, store, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    auth = authorize(brain, outbox)
    store.close()
    again, _, out2 = restarted(tmp_path, resume_grace=0.1)
    expire(again)
    again.tick()
    assert out2.of(m.EndSupply)[0].reason is m.EndReason.DISCONNECTED
    expire(again)
    again.tick()
    assert out2.of(m.Ticket)[0].session_id == auth.session_id


def test_unconfirmed_messages_are_sent_again_after_a_crash(parts, tmp_path):
    brain, store, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    settle(brain, outbox)
    auth = authorize(brain, outbox)  # stored and sent, never confirmed: then the crash
    store.close()
    again, _, out2 = restarted(tmp_path)
    resent = out2.of(m.Authorization)
    assert [a.msg_id for a in resent] == [auth.msg_id]
    assert out2.of(m.StartSupply)[0].session_id == auth.session_id
    settle(again, out2)
    assert not again.out.unsent.pending and not again.store.outbox()


def test_a_permanent_failure_is_not_retried_and_is_said_once(parts, tmp_path):
    brain, store, outbox, _, view = parts
    register(brain, 1, "CP-01")
    outbox.confirm_all(False, retriable=False)  # e.g. the broker refuses the topic (ACL)
    while not brain.events.empty():
        brain.apply(brain.events.get_nowait())
    assert not brain.out.unsent.pending  # nothing left to retry in this run
    sent = len(outbox.sent)
    for _ in range(3):
        brain.tick()
    assert not [msg for _, msg, _ in outbox.sent[sent:] if isinstance(msg, m.ResumeCP)]
    refused = [(level, text) for level, text in view.notes if "for good" in text]
    assert len(refused) == 1 and refused[0][0] == "error" and "timed out" in refused[0][1]
    # kept in the stored outbox: a restart (the cause mended) sends it again
    brain.flush()
    store.close()
    again, _, out2 = restarted(tmp_path)
    assert out2.of(m.ResumeCP)

def test_a_failed_send_is_sent_again(parts):
    brain, _, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    settle(brain, outbox, ok=False)
    (pending,) = brain.out.unsent.pending.values()
    assert pending.retry_at > 0
    pending.retry_at = time.monotonic() - 1
    outbox.fail_next = 1  # the broker is still away: not even queued
    brain.tick()
    while not brain.events.empty():  # its verdict comes back as an event, as Kafka's do
        brain.apply(brain.events.get_nowait())
    assert pending.retry_at > 0 and pending.failures == 2
    pending.retry_at = time.monotonic() - 1
    brain.tick()
    settle(brain, outbox)
    resumes = [msg for _, msg, _ in outbox.sent if isinstance(msg, m.ResumeCP)]
    assert not brain.out.unsent.pending and len(resumes) == 2 and resumes[0] == resumes[1]


def test_a_record_is_applied_once_even_when_delivered_again(parts):
    from evc.central.events import BusMessage, BusSkipped
    from evc.protocol.topics import Delivery

    brain, store, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    req = m.ChargeRequest(driver_id="D-1", cp_id="CP-01")
    brain.apply(BusSkipped(Delivery("requests_topic", 0, 4), "garbage"))
    brain.apply(BusMessage(req, Delivery("requests_topic", 0, 5)))
    brain.apply(BusMessage(m.ChargeRequest(driver_id="D-2", cp_id="CP-01"),
                           Delivery("requests_topic", 0, 5)))  # a redelivery of offset 5
    assert len(outbox.of(m.Authorization)) == 1
    assert store.offsets() == {("requests_topic", 0): 6}


def test_deadlines_wait_while_kafka_is_unavailable(parts):
    brain, _, outbox, _, view = parts
    register(brain, 1, "CP-01")
    auth = authorize(brain, outbox)
    brain.on_bus(m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=1.0,
                             importe_eur=0.3, session_id=auth.session_id))
    brain.on_bus(m.EndRequest(driver_id="D-1", cp_id="CP-01", session_id=auth.session_id))
    session = brain.sessions[auth.session_id]
    brain.out.last_confirm = time.monotonic() - 10  # nothing confirmed for 10 s
    brain.tick()
    assert brain.bus_down_since is not None
    brain.bus_down_mono -= 60  # a minute passes, Kafka still away: the deadline passes
    brain.bus_down_since -= 60
    session.deadline -= 60
    brain.tick()
    assert not outbox.of(m.Ticket)
    settle(brain, outbox)  # Kafka is back: the deadline moves by the outage
    brain.tick()
    assert brain.bus_down_since is None and not outbox.of(m.Ticket)
    assert session.deadline > time.monotonic()
    assert brain.age(time.time() - 70) == pytest.approx(10, abs=1)  # the outage is forgiven


def test_readings_never_go_down_and_central_prices_them(parts):
    brain, _, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    auth = authorize(brain, outbox)
    for kwh, eur in ((2.0, 99.0), (1.0, 0.3)):
        brain.on_bus(m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=kwh,
                                 importe_eur=eur, session_id=auth.session_id))
    session = brain.sessions[auth.session_id]
    assert session.kwh == 2.0 and session.eur == 0.6


def test_a_bare_reading_belongs_to_the_open_session_of_its_cp(parts):
    brain, _, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    auth = authorize(brain, outbox)
    brain.on_bus(m.Telemetry(cp_id="CP-01", driver_id="D-9", consumo_kwh=5.0, importe_eur=0))
    assert brain.sessions[auth.session_id].kwh == 0.0  # another driver: not this session
    brain.on_bus(m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=1.0, importe_eur=0,
                             final=True))
    assert outbox.of(m.Ticket)[0].consumo_kwh == 1.0


def test_operator_commands_with_errors_change_nothing(parts):
    brain, _, outbox, _, view = parts
    before = len(outbox.sent)
    for line in ("stop", "stop CP-77", "resume a b", "price CP-01 abc", "add CP-9 x", "zzz"):
        brain.apply(OperatorLine(line))
    assert len(outbox.sent) == before
    assert [lvl for lvl, _ in view.notes[-6:]] == ["error"] * 6


def test_operator_commands_for_all_and_the_registry(parts):
    brain, store, outbox, _, view = parts
    register(brain, 1, "CP-01")  # CP-02 has no monitor: it shows Desconectado
    brain.apply(OperatorLine("  "))  # an empty line: nothing at all
    brain.apply(OperatorLine("help"))
    assert "commands:" in view.notes[-1][1]
    brain.apply(OperatorLine("stop all"))
    assert {cp.cp_id: cp.stopped for cp in brain.cps.values()} == {"CP-01": True,
                                                                   "CP-02": True}
    assert brain.cps["CP-01"].state is m.CPState.PARADO
    assert "CP-02 stopped; it shows Desconectado" in view.notes[-1][1]  # said, not hidden
    brain.apply(OperatorLine("reanudar all"))
    assert not any(cp.stopped for cp in brain.cps.values())
    assert "CP-02 resumed; it shows Desconectado" in view.notes[-1][1]
    brain.apply(OperatorLine('add CP-03 "Plaza 1" 0.41'))
    assert brain.cps["CP-03"].price == 0.41 and "registered CP-03" in view.notes[-1][1]
    brain.apply(OperatorLine('add CP-03 "Plaza 2" 0.42'))
    assert brain.cps["CP-03"].location == "Plaza 2" and "updated CP-03" in view.notes[-1][1]
    brain.apply(OperatorLine("quit"))
    assert brain.quit_requested.is_set()

def test_messages_leave_only_after_the_batch_is_stored(tmp_path):
    store = Store(tmp_path / "c.json")
    outbox = FakeOutbox()
    brain = Brain(store, outbox, FakeLink(), RecordingView(), Settings(secure=False))
    brain.upsert_cp("CP-01", "x", 0.3)
    brain.apply(MonitorFrame(1, "p", m.Register(cp_id="CP-01")))
    brain.flush()
    sent_before = len(outbox.sent)
    brain.on_bus(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"))
    assert len(outbox.sent) == sent_before  # decided, not yet announced
    brain.flush()
    auth = outbox.of(m.Authorization)[-1]
    stored = read_database(tmp_path / "c.json")["sessions"]
    assert any(s["session_id"] == auth.session_id for s in stored.values())


def test_end_requests_and_readings_from_the_wrong_party_change_nothing(parts):
    brain, _, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    auth = authorize(brain, outbox)
    brain.on_bus(m.EndRequest(driver_id="D-2", cp_id="CP-01", session_id=auth.session_id))
    brain.on_bus(m.EndRequest(driver_id="D-1", cp_id="CP-02", session_id=auth.session_id))
    brain.on_bus(m.EndRequest(driver_id="D-1", cp_id="CP-01", session_id="nope"))
    assert not outbox.of(m.EndSupply)
    brain.on_bus(m.Telemetry(cp_id="CP-02", driver_id="D-1", consumo_kwh=9.0, importe_eur=1,
                             session_id=auth.session_id, final=True))
    assert brain.sessions[auth.session_id].kwh == 0.0 and not outbox.of(m.Ticket)


def test_an_engine_that_refuses_gives_a_refused_zero_ticket(parts):
    brain, _, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    auth = authorize(brain, outbox)
    brain.on_bus(m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=0.0, importe_eur=0,
                             session_id=auth.session_id, final=True, reason="refused"))
    (ticket,) = outbox.of(m.Ticket)
    assert ticket.reason is m.EndReason.REFUSED and ticket.consumo_kwh == 0.0
    assert state(brain, "CP-01") is m.CPState.ACTIVADO


def test_remove_is_refused_while_connected(parts):
    brain, store, _, _, view = parts
    register(brain, 1, "CP-01")
    brain.apply(OperatorLine("remove CP-01"))
    assert "CP-01" in brain.cps and view.notes[-1][0] == "error"
    brain.apply(ConnectionLost(1, "p", "gone"))
    brain.apply(OperatorLine("remove CP-01"))
    assert "CP-01" not in brain.cps and store.get_cp("CP-01") is None


def test_a_new_price_applies_from_the_next_supply(parts):
    brain, _, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    first = authorize(brain, outbox)
    brain.apply(OperatorLine("price CP-01 0.50"))
    brain.on_bus(m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=2.0, importe_eur=0,
                             session_id=first.session_id, final=True))
    assert outbox.of(m.Ticket)[-1].importe_eur == 0.6  # the price it started with
    second = authorize(brain, outbox, driver="D-2")
    assert second.price_eur_kwh == 0.5


def test_registration_updates_the_location_and_a_second_register_is_refused(parts):
    brain, store, _, link, _ = parts
    brain.apply(MonitorFrame(1, "p", m.Register(cp_id="CP-01", location="Nueva 7")))
    assert brain.cps["CP-01"].location == "Nueva 7"
    assert store.get_cp("CP-01")["location"] == "Nueva 7"
    brain.apply(MonitorFrame(1, "p", m.Register(cp_id="CP-01")))
    assert link.closed[-1][0] == 1 and link.closed[-1][2].code is m.RejectCode.PROTOCOL


def test_the_memory_of_answered_requests_is_bounded(parts):
    brain, _, outbox, _, _ = parts
    for i in range(100_005):
        brain.answered[f"r{i}"] = None
    brain.on_bus(m.ChargeRequest(driver_id="D-1", cp_id="CP-77"))
    assert len(brain.answered) == 100_000 and "r0" not in brain.answered


def test_a_restart_ends_an_open_session_whose_cp_was_removed(parts, tmp_path):
    brain, store, outbox, _, _ = parts
    register(brain, 1, "CP-01")
    auth = authorize(brain, outbox)
    store.remove_cp("CP-01")  # removed from the file by hand while central was down
    store.close()
    again, _, out2 = restarted(tmp_path)
    end = out2.of(m.EndSupply)[0]
    assert end.session_id == auth.session_id and end.reason is m.EndReason.CENTRAL_RESTART
    expire(again)
    again.tick()
    assert out2.of(m.Ticket)[0].reason is m.EndReason.CENTRAL_RESTART


def test_run_applies_batches_stores_them_then_sends_and_acks(tmp_path):
    from evc.central.events import BusMessage
    from evc.protocol.topics import Delivery

    class Acker:
        def __init__(self):
            self.acked = []

        def ack_all(self, deliveries):
            on_disk = read_database(tmp_path / "c.json")["offsets"]
            (stored,) = [r["next"] for r in on_disk.values()]
            for delivery in deliveries:
                assert stored > delivery.offset  # applied and stored before acked
                self.acked.append(delivery.offset)

    store = Store(tmp_path / "c.json")
    outbox = FakeOutbox()
    brain = Brain(store, outbox, FakeLink(), RecordingView(), Settings(secure=False))
    brain.upsert_cp("CP-01", "x", 0.3)
    brain.out.acker = Acker()
    brain.events.put(MonitorFrame(1, "p", m.Register(cp_id="CP-01")))
    for i in range(3):
        brain.events.put(BusMessage(m.ChargeRequest(driver_id=f"D-{i}", cp_id="CP-01"),
                                    Delivery("requests_topic", 0, i)))
    brain.events.put(OperatorLine("quit"))
    brain.run(__import__("threading").Event())  # returns: quit was asked
    assert brain.out.acker.acked == [0, 1, 2]
    assert len(outbox.of(m.Authorization)) == 3 and len(outbox.of(m.StartSupply)) == 1
    assert any(isinstance(msg, m.CentralStatus) for _, msg, _ in outbox.sent)
    statuses = [msg for _, msg, _ in outbox.sent if isinstance(msg, m.CPStatus)]
    assert statuses[-1].cp_id == "CP-01" and statuses[-1].state is m.CPState.SUMINISTRANDO


def test_a_bug_in_a_rule_harms_only_its_event(parts, monkeypatch):
    brain, _, outbox, _, view = parts
    register(brain, 1, "CP-01")

    def broken(_req):
        raise KeyError("a bug")

    monkeypatch.setattr(brain, "on_charge_request", broken)
    from evc.central.events import BusMessage
    from evc.protocol.topics import Delivery

    brain.apply(BusMessage(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"),
                           Delivery("requests_topic", 0, 7)))
    assert brain.counters.internal_errors == 1 and view.notes[-1][0] == "error"
    monkeypatch.undo()
    assert authorize(brain, outbox).authorized  # and the next one is served


def test_removed_cps_are_tombstoned_on_the_network_topic(parts):
    brain, _, outbox, _, _ = parts
    brain.tick()
    outbox.sent.clear()
    brain.apply(OperatorLine("remove CP-02"))
    brain.tick()
    tombstones = [(topic, key) for topic, msg, key in outbox.sent if msg is None]
    assert tombstones == [("network_topic", "CP-02")]


def test_a_slow_start_is_not_taken_for_kafka_being_away(tmp_path):
    """Loading a large registry before the loop runs is not Kafka's silence."""
    view = RecordingView()
    brain = Brain(Store(tmp_path / "c.json"), FakeOutbox(), FakeLink(), view,
                  Settings(secure=False))
    brain.out.last_confirm -= 60  # as if the registry took a minute to load
    brain.events.put(OperatorLine("quit"))
    brain.run(__import__("threading").Event())
    assert brain.bus_down_since is None
    assert not [text for _, text in view.notes if "Kafka unavailable" in text]


def test_an_ocpp_charger_is_marked_and_its_status_and_notes_shown(parts):
    from evc.central.board import detail

    brain, _, outbox, _, view = parts
    brain.apply(MonitorFrame(1, "peer", m.Register(cp_id="CP-01", via="ocpp")))
    brain.apply(MonitorFrame(1, "peer", m.ChargerStatus(cp_id="CP-01", status="Available")))
    cp = brain.cps["CP-01"]
    assert cp.via == "ocpp" and detail(cp, time.time()) == "[OCPP Available]"
    brain.apply(MonitorFrame(1, "peer", m.ChargerNote(cp_id="CP-01", note="Reset: Accepted")))
    assert ("info", "CP-01's charger: Reset: Accepted") in view.notes
    brain.apply(OperatorLine("ocpp CP-01 reset soft"))
    order = outbox.sent[-1][1]
    assert isinstance(order, m.ChargerCommand) and (order.action, order.arg) == ("Reset", "Soft")
    brain.apply(OperatorLine("ocpp CP-02 reset soft"))  # not an OCPP charger: nothing sent
    assert outbox.sent[-1][1] is order and view.notes[-1][0] == "error"
    brain.apply(ConnectionLost(1, "peer", "closed"))
    assert detail(cp, time.time()).startswith("[OCPP] last seen")


def test_a_card_names_a_registered_driver_and_comes_from_an_ocpp_charger(parts):
    brain, _, outbox, _, _ = parts
    brain.upsert_driver("D-1")
    brain.apply(MonitorFrame(1, "peer", m.Register(cp_id="CP-01", via="ocpp")))
    register(brain, 2, "CP-02")  # an evc CP: no cards there
    for i, (driver, cp) in enumerate((("NOBODY", "CP-01"), ("D-1", "CP-02"), ("D-1", "CP-01"))):
        brain.apply(BusMessage(m.ChargeRequest(driver_id=driver, cp_id=cp, card=True),
                               Delivery("r", 0, i)))
    answers = [msg for _, msg, _ in outbox.sent if isinstance(msg, m.Authorization)]
    assert [(a.authorized, a.code) for a in answers] == [
        (False, m.DenyCode.UNKNOWN_DRIVER), (False, m.DenyCode.BAD_PROOF), (True, None)]

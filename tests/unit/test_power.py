"""A site's limit shared by the brain (fakes for the wire): the issue's example, and the
promise that the shares the engines may be obeying never add up to more than the limit."""

from __future__ import annotations

import pytest

from evc.central.events import MonitorFrame, OperatorLine
from evc.central.model import Settings
from evc.protocol import messages as m
from evc.store import Store
from tests.fakes import FakeLink, FakeOutbox, OneEventBatches, RecordingView


@pytest.fixture
def site(tmp_path):
    outbox, link, view = FakeOutbox(), FakeLink(), RecordingView()
    brain = OneEventBatches(Store(tmp_path / "c.json"), outbox, link, view,
                            Settings(secure=False, start_timeout=60))
    brain.set_site_limit("P1", 30.0)
    for i in (1, 2, 3):
        brain.upsert_cp(f"CP-0{i}", f"Calle {i}", 0.3, "P1")
        brain.apply(MonitorFrame(i, "p", m.Register(cp_id=f"CP-0{i}", max_kw=22.0)))
    return brain, outbox


def counted(brain) -> float:
    return sum(s.granted_kw for s in brain.sessions.values())


def obey(brain, outbox, cp: str, kwh: float = 0.0) -> None:
    """The engine's reading after the last power order for its supply."""
    session = brain.cps[cp].session
    orders = [o for o in outbox.of(m.SetPower) if o.session_id == session.session_id]
    last = orders[-1] if orders else next(o for o in outbox.of(m.StartSupply)
                                          if o.session_id == session.session_id)
    brain.on_bus(m.Telemetry(cp_id=cp, driver_id=session.driver_id, consumo_kwh=kwh,
                             importe_eur=0.0, session_id=session.session_id,
                             kw=min(22.0, last.kw if last.kw is not None else 22.0),
                             power_order=last.msg_id))


def share(outbox, session_id: str) -> float | None:
    orders = [o for o in outbox.of(m.SetPower) if o.session_id == session_id]
    if orders:
        return orders[-1].kw
    return next(o.kw for o in outbox.of(m.StartSupply) if o.session_id == session_id)


def test_three_supplies_share_thirty_kw(site):
    brain, outbox = site
    for i in (1, 2, 3):
        brain.on_bus(m.ChargeRequest(driver_id=f"D-{i}", cp_id=f"CP-0{i}"))
        assert counted(brain) <= 30 + 1e-9
        obey(brain, outbox, f"CP-0{i}")
        assert counted(brain) <= 30 + 1e-9
    for i in (1, 2, 3):  # every decrease obeyed, every increase sent
        obey(brain, outbox, f"CP-0{i}")
    sessions = {cp: brain.cps[cp].session.session_id for cp in ("CP-01", "CP-02", "CP-03")}
    assert [share(outbox, sessions[c]) for c in sorted(sessions)] == [10, 10, 10]
    # one ends: the others get 15 each, but only once its power is free
    brain.on_bus(m.EndRequest(driver_id="D-1", cp_id="CP-01", session_id=sessions["CP-01"]))
    assert share(outbox, sessions["CP-02"]) == 10  # CP-01 still counted until its final
    brain.on_bus(m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=0.5, importe_eur=0.15,
                             session_id=sessions["CP-01"], final=True, reason="finished", kw=0))
    assert share(outbox, sessions["CP-02"]) == 15 and share(outbox, sessions["CP-03"]) == 15
    # the limit drops to 8, under two minimums: one waits, the other gets 8
    brain.apply(OperatorLine("site P1 limit 8"))
    assert share(outbox, sessions["CP-02"]) == 8 and share(outbox, sessions["CP-03"]) == 0
    assert counted(brain) == 30  # neither decrease is obeyed yet
    obey(brain, outbox, "CP-02")
    obey(brain, outbox, "CP-03")
    assert counted(brain) == 8


def test_an_increase_waits_for_the_decrease_it_needs(site):
    brain, outbox = site
    brain.on_bus(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"))
    first = brain.cps["CP-01"].session
    assert share(outbox, first.session_id) == 22  # alone: its maximum
    obey(brain, outbox, "CP-01")
    brain.on_bus(m.ChargeRequest(driver_id="D-2", cp_id="CP-02"))
    second = brain.cps["CP-02"].session
    assert share(outbox, second.session_id) == 0  # 15 does not fit beside 22 yet
    assert share(outbox, first.session_id) == 15  # the decrease went at once
    stale = m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=0.1, importe_eur=0.0,
                        session_id=first.session_id, kw=10.0,
                        power_order=next(o.msg_id for o in outbox.of(m.StartSupply)
                                         if o.session_id == first.session_id))
    brain.on_bus(stale)  # a reading from before the order: proves nothing
    assert share(outbox, second.session_id) == 0
    obey(brain, outbox, "CP-01")
    assert share(outbox, second.session_id) == 15 and counted(brain) == 30


def test_without_a_limit_supplies_get_their_maximum_or_the_evs_request(site):
    brain, outbox = site
    brain.apply(OperatorLine("site P1 limit none"))
    brain.on_bus(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"))
    assert outbox.of(m.StartSupply)[-1].kw is None  # the engine's own maximum
    brain.apply(OperatorLine("site P1 limit 20"))
    brain.on_bus(m.ChargeRequest(driver_id="D-2", cp_id="CP-02", max_kw=6.0))
    obey(brain, outbox, "CP-01")
    obey(brain, outbox, "CP-02")
    obey(brain, outbox, "CP-01")
    shares = {s.cp_id: s.target_kw for s in brain.sessions.values()}
    assert shares == {"CP-01": 14.0, "CP-02": 6.0}


def test_a_restarted_central_keeps_counting_what_engines_may_draw(site, tmp_path):
    brain, outbox = site
    brain.on_bus(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"))
    obey(brain, outbox, "CP-01")
    brain.on_bus(m.ChargeRequest(driver_id="D-2", cp_id="CP-02"))  # CP-01's decrease sent
    brain.flush()
    brain.store.commit()
    again = OneEventBatches(brain.store, FakeOutbox(), FakeLink(), RecordingView(),
                            Settings(secure=False, start_timeout=60))
    assert again.sites == {"P1": 30.0}
    assert sum(s.granted_kw for s in again.sessions.values()) <= 30
    assert {s.cp_id: s.granted_kw for s in again.sessions.values()} == {"CP-01": 22.0,
                                                                          "CP-02": 0.0}
    # its power orders go on numbering from the last one sent (an engine obeys only newer)
    before = [o.seq for o in outbox.of(m.SetPower)]
    assert before == sorted(set(before)) and before[0] >= 1
    assert again.sessions[brain.cps["CP-01"].session.session_id].power_seq == before[-1]


def test_a_cps_own_maximum_caps_its_share(site):
    brain, outbox = site
    brain.apply(MonitorFrame(9, "p", m.Register(cp_id="CP-04", max_kw=7.0)))  # not on P1
    assert brain.cps.get("CP-04") is None  # (not in the registry: refused)
    from evc.central.events import ConnectionLost
    brain.apply(ConnectionLost(1, "p", "gone"))
    brain.apply(MonitorFrame(11, "p", m.Register(cp_id="CP-01", max_kw=7.0)))
    assert brain.cps["CP-01"].max_kw == 7.0
    brain.on_bus(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"))
    assert share(outbox, brain.cps["CP-01"].session.session_id) == 7.0


def test_an_increase_is_stored_with_the_power_it_grants(site):
    """A central that takes over or restarts counts what the engines were last allowed:
    an increase's granted power is stored with its order (it was stored before it was
    raised: a takeover counted a supply of 17.6 kW as 0 and gave the others its power)."""
    brain, outbox = site
    brain.on_bus(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"))
    obey(brain, outbox, "CP-01")
    brain.on_bus(m.ChargeRequest(driver_id="D-2", cp_id="CP-02"))  # waits: 0 kW
    obey(brain, outbox, "CP-01")  # CP-01 obeyed its decrease: CP-02's increase goes
    second = brain.cps["CP-02"].session
    assert share(outbox, second.session_id) == 15 and second.granted_kw == 15
    brain.flush()
    assert brain.store.get_session(second.session_id)["granted_kw"] == 15
    again = OneEventBatches(brain.store, FakeOutbox(), FakeLink(), RecordingView(),
                            Settings(secure=False, start_timeout=60))
    assert sorted(s.granted_kw for s in again.sessions.values()) == [15.0, 15.0]

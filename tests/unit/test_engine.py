"""The engine's rules, without sockets or Kafka: health, orders, keys, the meter, the journal."""

from __future__ import annotations

import dataclasses
import time

import pytest

from evc.cp_engine.engine import Engine, Mode
from evc.errors import BusError
from evc.protocol import messages as m
from evc.protocol.topics import TELEMETRY


class Journal:
    def __init__(self, data: dict | None = None) -> None:
        self.data = data or {}
        self.saves = 0

    def load(self) -> dict:
        return dict(self.data)

    def save(self, data: dict) -> None:
        self.data = dict(data)
        self.saves += 1


class Wire:
    """The engine's send: records what it sends; Kafka answers when told."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, m.Message, str]] = []
        self.pending: list = []
        self.fail = False

    def __call__(self, topic, message, key, on_done=None) -> None:
        if self.fail:
            raise BusError("broker away", retriable=True)
        self.sent.append((topic, message, key))
        if on_done is not None:
            self.pending.append(on_done)

    def confirm(self, ok: bool = True, *, retriable: bool = True) -> None:
        pending, self.pending = self.pending, []
        for on_done in pending:
            on_done(None if ok else BusError("timed out", retriable=retriable))

    def telemetry(self, **match) -> list[m.Telemetry]:
        return [msg for topic, msg, _ in self.sent if topic == TELEMETRY
                and all(getattr(msg, k) == v for k, v in match.items())]


@pytest.fixture
def parts():
    """An engine of a CP served unproven (its monitor said so: ``EngineOpen``)."""
    wire, journal, shown = Wire(), Journal(), []
    engine = Engine(wire, shown.append, journal=journal)
    engine.open = True
    return engine, wire, journal, shown


def start(engine, session="s1", driver="D-1", cp="CP-01", price=0.4):
    engine.on_order(m.StartSupply(cp_id=cp, driver_id=driver, session_id=session,
                                  price_eur_kwh=price))


def tick_seconds(engine, n: int) -> None:
    for _ in range(n):
        assert engine.supply is not None
        engine.supply.next_tick = time.monotonic() - 0.001  # a second has passed
        engine.tick()


def test_learns_its_cp_from_the_monitor_and_answers_health(parts):
    engine, _, _, shown = parts
    assert engine.state is m.CPState.ACTIVADO and "waiting for monitor" in engine.status_line()
    reply = engine.on_health_check(m.HealthCheck(cp_id="CP-01"))
    assert engine.cp_id == "CP-01" and reply.status is m.Health.OK
    assert "serving CP-01" in shown[-1]
    wrong = engine.on_health_check(m.HealthCheck(cp_id="CP-02"))
    assert wrong.status is m.Health.KO and wrong.state == "wrong CP"
    engine.on_key("f")
    assert engine.on_health_check(m.HealthCheck(cp_id="CP-01")).status is m.Health.KO
    assert engine.state is m.CPState.AVERIADO
    engine.on_key("h")
    assert engine.on_health_check(m.HealthCheck(cp_id="CP-01")) is None  # hang: silence
    engine.on_key("r")
    assert engine.mode is Mode.OK
    engine.on_key("x")
    assert "unknown key 'x'" in shown[-1]


def test_orders_for_other_cps_or_before_knowing_its_cp_are_ignored(parts):
    engine, wire, _, _ = parts
    start(engine)  # no CP id yet
    assert engine.supply is None and not wire.sent
    engine.cp_id = "CP-01"
    start(engine, cp="CP-02")
    assert engine.supply is None


def test_a_supply_meters_each_second_and_ends_with_one_final(parts):
    engine, wire, journal, _ = parts
    engine.cp_id = "CP-01"
    start(engine)
    assert engine.state is m.CPState.SUMINISTRANDO
    assert wire.telemetry(consumo_kwh=0.0)  # at once: the supply started
    tick_seconds(engine, 3)
    assert [t.consumo_kwh for t in wire.telemetry(final=False)] == [0.0, 0.5, 1.0, 1.5]
    assert wire.telemetry()[-1].importe_eur == round(1.5 * 0.4, 2)
    assert journal.data["supply"]["kwh"] == 1.5  # the meter is journaled
    assert "D-1 1.50 kWh" in engine.status_line().replace("driver ", "")
    engine.on_order(m.EndSupply(cp_id="CP-01", session_id="s1", reason=m.EndReason.FINISHED))
    (final,) = wire.telemetry(final=True)
    assert final.consumo_kwh == 1.5 and final.reason == "finished"
    assert engine.supply is None and journal.data["finals"]  # kept until Kafka confirms
    wire.confirm()
    assert not engine.finals and not journal.data["finals"]
    engine.on_order(m.EndSupply(cp_id="CP-01", session_id="s1", reason=m.EndReason.FINISHED))
    assert len(wire.telemetry(final=True)) == 1  # an end for what is not running: nothing


def test_a_repeated_start_order_is_never_obeyed_twice(parts):
    engine, wire, journal, _ = parts
    engine.cp_id = "CP-01"
    start(engine)
    engine.on_key("u")
    start(engine)  # central re-sent an order Kafka had not confirmed
    assert engine.supply is None and len(wire.telemetry(final=True)) == 1
    assert journal.data["seen"] == ["s1"]


@pytest.mark.parametrize("setup, why", [
    (lambda e: e.on_key("f"), "engine faulted"),
    (lambda e: e.on_order(m.StopCP(cp_id="CP-01")), "stopped by central"),
    (lambda e: start(e, session="other", driver="D-9"), "busy with D-9"),
])
def test_a_start_it_cannot_obey_is_refused_with_a_zero_final(parts, setup, why):
    engine, wire, _, shown = parts
    engine.cp_id = "CP-01"
    setup(engine)
    start(engine, session="s2", driver="D-2")
    (refused,) = wire.telemetry(session_id="s2", final=True)
    assert refused.reason == "refused" and refused.consumo_kwh == 0.0
    assert any(why in line for line in shown)


@pytest.mark.parametrize("act, reason", [
    (lambda e: e.on_key("f"), "fault"),
    (lambda e: e.on_key("h"), "fault"),
    (lambda e: e.on_key("u"), "unplugged"),
    (lambda e: e.on_order(m.StopCP(cp_id="CP-01")), "stopped"),
    (lambda e: e.shutdown(), "fault"),
])
def test_every_end_of_a_supply_sends_its_final_figures(parts, act, reason):
    engine, wire, _, _ = parts
    engine.cp_id = "CP-01"
    start(engine)
    tick_seconds(engine, 2)
    act(engine)
    (final,) = wire.telemetry(final=True)
    assert final.reason == reason and final.consumo_kwh == 1.0


def test_stop_and_resume(parts):
    engine, _, _, shown = parts
    engine.cp_id = "CP-01"
    engine.on_order(m.StopCP(cp_id="CP-01"))
    assert engine.state is m.CPState.PARADO and "Parado" in shown[-1]
    engine.on_order(m.ResumeCP(cp_id="CP-01"))
    assert engine.state is m.CPState.ACTIVADO and "resumed" in shown[-1]


def test_an_order_sent_again_is_not_obeyed_twice(parts):
    """Central re-sends what Kafka had not confirmed when it died: a stop decided before a
    resume must not stop the CP again once it arrives a second time."""
    engine, _, _, _ = parts
    engine.cp_id = "CP-01"
    stop, resume = m.StopCP(cp_id="CP-01"), m.ResumeCP(cp_id="CP-01")
    for order in (stop, resume, stop, resume):
        engine.on_order(order)
    assert engine.state is m.CPState.ACTIVADO
    engine.on_order(stop)
    assert engine.state is m.CPState.ACTIVADO


def test_an_earlier_share_sent_again_never_comes_back(parts):
    """Power orders count by their seq: after 15 then 10 kW, a 15 sent again (or
    delivered late) is ignored, so the site's count of 10 stays true."""
    engine, wire, _, _ = parts
    engine.cp_id = "CP-01"
    start(engine)
    up = m.SetPower(cp_id="CP-01", session_id="s1", kw=15.0, seq=1)
    down = m.SetPower(cp_id="CP-01", session_id="s1", kw=10.0, seq=2)
    engine.on_order(up)
    engine.on_order(down)
    engine.on_order(dataclasses.replace(up, msg_id="again"))  # same share, new record
    assert engine.kw == 10.0
    assert wire.telemetry()[-1].kw == 10.0
    assert wire.telemetry()[-1].power_order == down.msg_id


def test_the_time_limit_ends_a_supply():
    wire = Wire()
    engine = Engine(wire, lambda _: None, journal=Journal(), cp_id="CP-01", max_seconds=2)
    engine.open = True
    start(engine)
    engine.supply.started -= 5
    tick_seconds(engine, 1)
    assert wire.telemetry(final=True)[0].reason == "time_limit"


def test_a_tick_without_supply_waits_a_second_and_a_late_tick_does_not_burst(parts):
    engine, wire, _, _ = parts
    assert engine.tick() == 1.0
    engine.cp_id = "CP-01"
    start(engine)
    engine.supply.next_tick = time.monotonic() - 30  # the process was suspended 30 s
    engine.tick()
    assert engine.supply.kwh == 0.5 and engine.supply.next_tick > time.monotonic()


def test_a_killed_engine_reports_its_unfinished_supply_when_it_starts_again():
    journal, shown = Journal(), []
    first = Engine(Wire(), shown.append, journal=journal, cp_id="CP-01")
    first.open = True
    start(first)
    tick_seconds(first, 4)  # ... and then kill -9: nothing more runs
    wire = Wire()
    again = Engine(wire, shown.append, journal=journal)
    again.recover()
    again.open = True
    (final,) = wire.telemetry(final=True)
    assert (final.session_id, final.consumo_kwh, final.reason) == ("s1", 2.0, "fault")
    assert "reporting its 2.00 kWh" in shown[-1]
    start(again, cp="CP-01")  # the order of that supply again: never obeyed twice
    again.cp_id = "CP-01"
    start(again)
    assert again.supply is None


def test_a_final_refused_for_good_is_not_retried_but_kept_for_the_next_start(parts):
    engine, wire, journal, shown = parts
    engine.cp_id = "CP-01"
    start(engine)
    engine.on_key("u")
    wire.confirm(ok=False, retriable=False)  # e.g. a record the broker will never take
    assert not engine.finals and [line for line in shown if "for good" in line] != []
    sent = len(wire.sent)
    for _ in range(3):
        engine.tick()
    assert len(wire.sent) == sent  # not sent again in this run
    assert journal.data["finals"]  # but a restart (the cause mended) sends it
    again_wire = Wire()
    Engine(again_wire, lambda _: None, journal=journal).recover()
    assert [t.final for _, t, _ in again_wire.sent] == [True]

def test_unconfirmed_finals_are_sent_again_until_kafka_takes_them(parts):
    engine, wire, journal, _ = parts
    engine.cp_id = "CP-01"
    start(engine)
    engine.on_key("u")
    wire.confirm(ok=False)  # Kafka gave up on it
    pending = engine.finals.pending["s1"]
    assert pending.retry_at
    pending.retry_at = time.monotonic() - 1
    wire.fail = True  # the broker is still away: not even queued
    engine.tick()
    assert pending.retry_at > time.monotonic()
    wire.fail = False
    pending.retry_at = time.monotonic() - 1
    engine.tick()
    wire.confirm()
    assert not engine.finals
    assert len(wire.telemetry(final=True)) == 2  # the same final, twice: once taken
    # and a restart finds nothing to send
    again_wire = Wire()
    Engine(again_wire, lambda _: None, journal=journal).recover()
    assert not again_wire.sent


def test_a_live_reading_kafka_cannot_take_is_skipped_not_fatal(parts):
    engine, wire, _, _ = parts
    engine.cp_id = "CP-01"
    start(engine)
    wire.fail = True
    tick_seconds(engine, 1)  # no exception: the next reading carries on
    wire.fail = False
    tick_seconds(engine, 1)
    assert wire.telemetry()[-1].consumo_kwh == 1.0


def test_a_journal_from_another_version_is_dropped_with_a_log(caplog):
    journal = Journal({"finals": [{"type": "telemetry", "cp_id": 5}], "seen": ["a"]})
    wire = Wire()
    engine = Engine(wire, lambda _: None, journal=journal)
    engine.recover()
    assert not wire.sent and engine.seen == ["a"]
    assert "not understood" in caplog.text


# ------------------------------------------------------------- the authenticated level

SECRET = "5e" * 32


@pytest.fixture
def trusted():
    """An engine holding CP-01's credential (as its credential file would give it)."""
    wire, journal, shown = Wire(), Journal(), []
    engine = Engine(wire, shown.append, journal=journal,
                    secret_for=lambda cp: SECRET if cp == "CP-01" else None)
    return engine, wire, journal, shown


def proven_check(cp="CP-01", nonce="n1", ts=None, secret=SECRET) -> m.HealthCheck:
    from evc.protocol import auth

    ts = time.time() if ts is None else ts
    return m.HealthCheck(cp_id=cp, nonce=nonce, ts=ts,
                         proof=auth.check_proof(secret, cp, nonce, ts))


def hand_key(engine, cp="CP-01", client="c" * 32, server="s" * 32, secret=SECRET) -> str:
    from evc.protocol import auth

    key = auth.kafka_key(secret, client, server)
    assert engine.on_engine_key(m.EngineKey(cp_id=cp, client_nonce=client, server_nonce=server,
                                            key_id=auth.key_id(key)))
    return key


def test_only_proven_fresh_health_checks_are_answered(trusted):
    engine, *_ = trusted
    assert engine.refuse_check(m.HealthCheck(cp_id="CP-01")) is None  # not proven yet
    hand_key(engine)
    assert engine.refuse_check(proven_check()) is None
    assert "replayed" in engine.refuse_check(proven_check())  # the same nonce again
    assert "replayed" in engine.refuse_check(proven_check(nonce="n2", ts=time.time() - 600))
    assert "without its credential's proof" in engine.refuse_check(m.HealthCheck(cp_id="CP-01"))
    assert "without" in engine.refuse_check(proven_check(nonce="n3", secret="00" * 32))
    engine.nonces = {f"old{i}": time.time() - 3600 for i in range(1000)}
    assert engine.refuse_check(proven_check(nonce="n4")) is None
    assert list(engine.nonces) == ["n4"]  # nonces too old to be replayed are forgotten


def test_a_key_is_taken_only_when_derived_from_the_cps_own_secret(trusted):
    from evc.protocol import auth

    engine, _, journal, shown = trusted
    wrong = auth.kafka_key("00" * 32, "c" * 32, "s" * 32)
    assert not engine.on_engine_key(m.EngineKey(
        cp_id="CP-01", client_nonce="c" * 32, server_nonce="s" * 32,
        key_id=auth.key_id(wrong)))
    assert not engine.on_engine_key(m.EngineKey(
        cp_id="CP-09", client_nonce="c" * 32, server_nonce="s" * 32, key_id="x"))
    assert engine.cp_id is None and engine.keys == {}
    key = hand_key(engine)
    assert engine.cp_id == "CP-01" and "serving CP-01" in shown[-2]
    assert "CP-01 is proven" in shown[-1] and engine.proven
    assert journal.data["keys"] == {auth.key_id(key): key}
    hand_key(engine, client="d" * 32)
    hand_key(engine, client="e" * 32)
    assert len(engine.keys) == 2  # the newest and the one before it


def test_orders_are_obeyed_only_when_signed_with_the_registrations_key(trusted):
    from evc.protocol import auth

    engine, wire, *_ = trusted
    key = hand_key(engine)
    order = m.StartSupply(cp_id="CP-01", driver_id="D-1", session_id="s1", price_eur_kwh=0.4)
    engine.on_order(order)  # unsigned
    engine.on_order(auth.sign(order, "ab" * 32))  # signed with a key never handed over
    assert engine.supply is None and len(engine.parked) == 1
    forged = dataclasses.replace(auth.sign(order, key), price_eur_kwh=0.0)
    engine.on_order(forged)  # the right key id, but not what was signed
    assert engine.supply is None
    engine.on_order(auth.sign(order, key))
    assert engine.supply is not None and engine.supply.session_id == "s1"
    tick_seconds(engine, 1)
    reading = wire.telemetry(session_id="s1")[-1]
    assert auth.verify(reading, key)  # readings carry the same key


def test_a_credential_alone_does_not_make_the_engine_deaf(trusted):
    """Central serves this CP unproven (the open level, its monitor holds no credential):
    the engine that merely finds the CP's file obeys its unsigned orders."""
    engine, *_ = trusted
    engine.on_health_check(m.HealthCheck(cp_id="CP-01"))
    engine.on_order(m.StartSupply(cp_id="CP-01", driver_id="D-1", session_id="s1",
                                  price_eur_kwh=0.4))
    assert engine.supply is None and engine.parked  # its level not told yet: it waits
    assert engine.on_engine_open(m.EngineOpen(cp_id="CP-01"))
    assert engine.supply is not None and not engine.proven and not engine.parked


def test_nothing_talks_a_proven_engine_down(trusted):
    engine, _, journal, shown = trusted
    hand_key(engine)
    assert not engine.on_engine_open(m.EngineOpen(cp_id="CP-01"))
    assert "was proven" in shown[-1]
    again = Engine(Wire(), shown.append, journal=Journal(journal.data),
                   secret_for=lambda cp: SECRET)
    again.recover()  # restarted: still proven
    assert not again.on_engine_open(m.EngineOpen(cp_id="CP-01"))
    again.cp_id = "CP-01"
    again.on_order(m.StartSupply(cp_id="CP-01", driver_id="D-1", session_id="s9",
                                 price_eur_kwh=0.4))
    assert again.supply is None and "unsigned" in again.refusals[-1][0]


def test_a_proven_engine_refuses_unsigned_orders_and_says_so(trusted):
    engine, _, _, shown = trusted
    hand_key(engine)
    engine.on_order(m.StartSupply(cp_id="CP-01", driver_id="D-1", session_id="s1",
                                  price_eur_kwh=0.4))
    engine.on_order(m.StopCP(cp_id="CP-01"))
    assert engine.supply is None and not engine.stopped
    assert "refused an unsigned start_supply" in shown[-2]
    reply = engine.on_health_check(m.HealthCheck(cp_id="CP-01"))
    assert reply.refused.startswith("an unsigned start_supply order")
    assert reply.refused.endswith("and 1 more") and reply.session_id == "s1"
    assert engine.on_health_check(m.HealthCheck(cp_id="CP-01")).refused == ""  # told once


def test_an_order_signed_before_the_key_arrives_waits_for_it(trusted):
    from evc.protocol import auth

    engine, *_ = trusted
    hand_key(engine)
    key2 = auth.kafka_key(SECRET, "f" * 32, "s" * 32)
    engine.on_order(auth.sign(m.StartSupply(cp_id="CP-01", driver_id="D-1", session_id="s2",
                                            price_eur_kwh=0.4), key2))
    assert engine.supply is None and engine.parked
    hand_key(engine, client="f" * 32)  # the monitor registered again: the new key
    assert engine.supply is not None and engine.supply.session_id == "s2"
    assert engine.parked == []


def test_keys_and_seen_orders_survive_a_restart(trusted):
    engine, wire, journal, _ = trusted
    key = hand_key(engine)
    again = Engine(wire, lambda _t: None, journal=Journal(journal.data),
                   secret_for=lambda cp: SECRET)
    again.recover()
    assert list(again.keys.values()) == [key]

"""The pure parts of two-central operation: the store's changelog hooks, a takeover's
presumed board, the standby's model and banner, several Kafka and central addresses,
and a local broker cluster's layout. (The flows: tests/flow/test_failover.py, test_cluster.py.)"""

from __future__ import annotations

import json
import time

import pytest

from evc.broker import manager
from evc.central.board import Board
from evc.central.brain import Brain
from evc.central.events import MonitorFrame
from evc.central.model import Settings
from evc.central.standby import StandbyModel
from evc.errors import ConfigError, EvcError
from evc.net import Address, parse_bootstrap
from evc.protocol import messages as m
from evc.store import CPS, META, OUTBOX, SESSIONS, Store, read_database
from tests.fakes import FakeLink, FakeOutbox, RecordingView


def test_a_commit_hands_its_changes_to_the_replica(tmp_path):
    store = Store(tmp_path / "c.json")
    seen: list[list[tuple[str, str | None]]] = []
    store.replica = seen.append
    store.put_cp({"cp_id": "CP-01", "location": "x"})
    store.put(META, {"name": "epoch", "value": 1})
    store.commit()
    assert dict(seen[-1]) == {"cps/CP-01": '{"cp_id":"CP-01","location":"x"}',
                              "meta/epoch": '{"name":"epoch","value":1}'}
    store.remove_cp("CP-01")
    store.commit()
    assert seen[-1] == [("cps/CP-01", None)]
    store.commit()  # nothing changed: nothing handed over
    assert len(seen) == 2
    # the outbox stays local: its messages go in the same transaction as the changes
    store.put(OUTBOX, {"msg_id": "m1", "topic": "control_topic", "key": "CP-01", "wire": {}})
    store.put_cp({"cp_id": "CP-02"})
    store.commit()
    assert seen[-1] == [("cps/CP-02", '{"cp_id":"CP-02"}')]
    store.remove(OUTBOX, "m1")
    store.commit()
    assert len(seen) == 3  # the removal is local too: nothing to hand over
    assert store.get(OUTBOX, "m1") is None and "outbox/m1" not in dict(store.changes())
    store.close()


def test_late_changes_reach_the_replica_later_newest_only_and_never_after_newer(tmp_path):
    store = Store(tmp_path / "c.json")
    store.late_every = 3600  # only flush_late() hands them over
    seen: list[list[tuple[str, str | None]]] = []
    store.replica = seen.append
    store.put(SESSIONS, {"session_id": "S1", "consumo_kwh": 1.0}, late=True)
    store.set_offset("t", 0, 10, late=True)
    store.commit()
    assert seen == []  # journaled, not handed over yet
    store.put(SESSIONS, {"session_id": "S1", "consumo_kwh": 1.5}, late=True)
    store.set_offset("t", 0, 11, late=True)
    store.commit()
    assert seen == []
    store.flush_late()
    store.commit()  # nothing new, but the late ones are due: their newest versions, once
    assert dict(seen[-1]) == {"sessions/S1": '{"session_id":"S1","consumo_kwh":1.5}',
                              "offsets/t:0": '{"tp":"t:0","next":11}'}
    # a change that is not late takes the record along at once, and a late version
    # pending from before is dropped (the new one is newer)
    store.put(SESSIONS, {"session_id": "S1", "consumo_kwh": 2.0}, late=True)
    store.commit()
    store.put(SESSIONS, {"session_id": "S1", "end_reason": "finished"})
    store.put(SESSIONS, {"session_id": "S1", "consumo_kwh": 2.5}, late=True)  # same batch
    store.commit()
    assert dict(seen[-1]) == {"sessions/S1": '{"session_id":"S1","consumo_kwh":2.5,'
                                             '"end_reason":"finished"}'}
    store.flush_late()
    store.commit()
    assert len(seen) == 2  # nothing late was left behind
    # a removal drops a late version still pending
    store.put(SESSIONS, {"session_id": "S2", "consumo_kwh": 1.0}, late=True)
    store.commit()
    store.remove(SESSIONS, "S2")
    store.commit()
    store.flush_late()
    store.commit()
    assert seen[-1] == [("sessions/S2", None)] and len(seen) == 3
    store.close()
    assert read_database(tmp_path / "c.json")["sessions"]["S1"]["consumo_kwh"] == 2.5


def test_a_standby_store_takes_the_changelog_and_garbage_wipes_nothing(tmp_path):
    active = Store(tmp_path / "a.json")
    active.put_cp({"cp_id": "CP-01", "state": "Activado"})
    active.put_session({"session_id": "S1", "cp_id": "CP-01", "status": "open"})
    active.commit()
    standby = Store(tmp_path / "b.json")
    standby.put_cp({"cp_id": "CP-OLD"})
    standby.commit()
    # garbage on the topic (no table, not JSON, not an object): nothing applied, nothing lost
    assert standby.apply_changes([("CP-01", "x"), ("cps/CP-02", "{nope"), ("cps/CP-03", "[1]"),
                                  ("", None)], replace=True) == 0
    assert standby.get_cp("CP-OLD") is not None
    assert standby.apply_changes(active.changes(), replace=True) == 2
    standby.commit()
    assert [c["cp_id"] for c in standby.cps()] == ["CP-01"]
    assert standby.get(SESSIONS, "S1") == {"session_id": "S1", "cp_id": "CP-01",
                                           "status": "open"}
    assert standby.apply_changes([("cps/CP-01", None)]) == 1
    standby.close()
    reopened = Store(tmp_path / "b.json")
    assert reopened.cps() == [] and reopened.get(SESSIONS, "S1") is not None
    reopened.close()
    active.close()


def brain_after_takeover(tmp_path, presume: float) -> Brain:
    store = Store(tmp_path / "c.json")
    store.put(CPS, {"cp_id": "CP-01", "location": "a", "price_eur_kwh": 0.3,
                    "state": "Activado"})
    store.put(CPS, {"cp_id": "CP-02", "location": "b", "price_eur_kwh": 0.3,
                    "state": "Desconectado"})
    store.commit()
    return Brain(store, FakeOutbox(), FakeLink(), RecordingView(), Settings(secure=False),
                 presume=presume, epoch=2)


def test_a_takeover_shows_connected_cps_as_they_were_until_the_grace_ends(tmp_path):
    brain = brain_after_takeover(tmp_path, presume=3.0)
    assert brain.cps["CP-01"].state is m.CPState.ACTIVADO  # presumed
    assert brain.cps["CP-02"].state is m.CPState.DESCONECTADO
    brain.cps["CP-01"].presumed_until = time.monotonic() - 1  # the grace is over
    brain.tick()
    assert brain.cps["CP-01"].state is m.CPState.DESCONECTADO
    assert ("CP-01", "Activado", "Desconectado",
            "its monitor did not register again") in brain.view.changes


def test_a_monitor_back_in_time_ends_the_presumption(tmp_path):
    brain = brain_after_takeover(tmp_path, presume=3.0)
    brain.apply(MonitorFrame(1, "peer", m.Register(cp_id="CP-01", location="", health=m.Health.OK)))
    brain.cps["CP-01"].presumed_until = 0.0
    brain.tick()
    assert brain.cps["CP-01"].state is m.CPState.ACTIVADO and brain.cps["CP-01"].conn_id == 1
    beats = [msg for _, msg, _ in brain.outbox.sent if isinstance(msg, m.CentralStatus)]
    assert beats and beats[-1].epoch == 2


def test_a_restart_without_presumption_starts_from_nobody_connected(tmp_path):
    brain = brain_after_takeover(tmp_path, presume=0.0)
    assert brain.cps["CP-01"].state is m.CPState.DESCONECTADO


def test_the_standby_board_shows_the_replicated_network_and_who_is_active(tmp_path):
    store = Store(tmp_path / "c.json")
    store.put(CPS, {"cp_id": "CP-01", "location": "a", "price_eur_kwh": 0.3,
                    "state": "Suministrando"})
    store.put(CPS, {"cp_id": "CP-02", "location": "b", "price_eur_kwh": 0.4,
                    "state": "what?"})
    store.put_session({"session_id": "S1", "cp_id": "CP-01", "driver_id": "D-7",
                       "status": "open", "consumo_kwh": 2.5, "importe_eur": 0.75})
    store.put_session({"session_id": "S0", "cp_id": "CP-02", "driver_id": "D-1",
                       "status": "closed"})
    model = StandbyModel()
    model.reload(store)
    assert model.banner == "STANDBY: no active central heard yet"
    model.heard_active("pc2:5000 pid 7", time.time() - 60, 3)
    assert model.banner.startswith("STANDBY: active is pc2:5000 pid 7 since ")
    assert model.counts()[m.CPState.SUMINISTRANDO] == 1
    assert model.cps["CP-02"].state is m.CPState.DESCONECTADO
    lines = Board("t", colors_256=False).render(model, 100, 20, "central> ")  # type: ignore[arg-type]
    text = "\n".join(lines)
    assert "STANDBY: active is pc2:5000 pid 7" in text and "(read-only)" in text
    assert "D-7 2.50 kWh 0.75 €" in text
    assert model.counters.tickets == 1
    store.close()


def test_kafka_takes_one_broker_or_several():
    assert str(parse_bootstrap("10.0.0.2:9092")) == "10.0.0.2:9092"
    both = parse_bootstrap("10.0.0.2:9092, 10.0.0.3:9092,")
    assert both.addresses == (Address("10.0.0.2", 9092), Address("10.0.0.3", 9092))
    assert str(both) == "10.0.0.2:9092,10.0.0.3:9092"
    for bad in ("", ",", "10.0.0.2", "10.0.0.2:9092,nope"):
        with pytest.raises(EvcError):
            parse_bootstrap(bad)


def test_a_local_cluster_has_its_ports_voters_and_replication(tmp_path):
    nodes = manager.cluster_configs(Address("127.0.0.1", 29092), 3, tmp_path)
    assert [(c.listen.port, c.controller.port, c.node_id) for c in nodes] == [
        (29092, 29093, 1), (29094, 29095, 2), (29096, 29097, 3)]
    assert [c.data_dir.name for c in nodes] == ["node-1", "node-2", "node-3"]
    text = nodes[1].render()
    assert "node.id=2\n" in text
    assert "controller.quorum.voters=1@127.0.0.1:29093,2@127.0.0.1:29095,3@127.0.0.1:29097" in text
    for line in ("offsets.topic.replication.factor=3", "transaction.state.log.min.isr=2",
                 "default.replication.factor=3", "min.insync.replicas=2",
                 "group.min.session.timeout.ms=1000"):
        assert line in text.splitlines()
    single = manager.make_config(Address("127.0.0.1", 9092), None, tmp_path, None).render()
    assert "controller.quorum.voters=1@127.0.0.1:9093" in single
    assert "min.insync.replicas=1" in single.splitlines()
    with pytest.raises(ConfigError):
        manager.cluster_configs(Address("0.0.0.0", 9092), 3, tmp_path)
    # one node per machine: its controller listens where the others reach it
    remote = manager.make_config(Address("0.0.0.0", 9092), Address("10.0.0.2", 9092),
                                 tmp_path, None, node_id=2, voters="1@a:9093,2@b:9093,3@c:9093",
                                 cluster_id="abc")
    assert "CONTROLLER://0.0.0.0:9093" in remote.render() and remote.replication == 3
    cid = manager.cluster_id(tmp_path / "x", fresh=False)
    assert manager.cluster_id(tmp_path / "x", fresh=False) == cid
    assert json.dumps(cid)  # plain text

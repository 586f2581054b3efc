"""Three brokers: any one may die mid-supply and nothing is lost (issue: no single point
of failure). Real Kafka: `evc broker start --nodes 3` runs a three-node KRaft cluster on
this machine; evc's topics get 3 replicas with min.insync.replicas=2."""

from __future__ import annotations

import json
import os
import signal

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from evc.bus import KafkaBus
from evc.net import Address, port_free
from evc.protocol import messages as m
from evc.protocol.topics import CHANGELOG, CONTROL
from tests.helpers import run_evc, wait_for
from tests.network import Network, Observer


def free_run(length: int) -> int:
    """A port p with p .. p+length-1 all free."""
    for base in range(random_base(), 60000, 97):
        if all(port_free(Address("127.0.0.1", base + i)) for i in range(length)):
            return base
    raise AssertionError("no free run of ports")


def random_base() -> int:
    return 30000 + int.from_bytes(os.urandom(2), "big") % 20000


@pytest.fixture
def cluster(tmp_path):
    base, data = free_run(6), str(tmp_path / "cluster")
    started = run_evc(["broker", "start", "--nodes", "3", "--listen", f"127.0.0.1:{base}",
                       "--data-dir", data, "--timeout", "180"], timeout=400)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "Kafka cluster of 3 brokers running at" in started.stdout
    try:
        yield ",".join(f"127.0.0.1:{base + 2 * i}" for i in range(3)), tmp_path / "cluster"
    finally:
        run_evc(["broker", "stop", "--data-dir", data], timeout=120)


def test_one_broker_of_three_dies_mid_supply_and_nothing_is_lost(cluster, prefix, tmp_path,
                                                                  procs):
    kafka, data = cluster
    status = run_evc(["broker", "status", "--data-dir", str(data)])
    assert status.returncode == 0 and status.stdout.count("running at") == 3, status.stdout
    net = Network(kafka, prefix, tmp_path, procs)
    net.start_central()
    with KafkaBus(kafka, prefix=prefix, client_id="evc-test") as bus:
        admin = bus._admin()
        try:
            (topic,) = admin.describe_topics([bus.topic(CONTROL)])
            assert {len(p["replica_nodes"]) for p in topic["partitions"]} == {3}
            found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC,
                                                           bus.topic(CONTROL))])
            assert found["topic"][bus.topic(CONTROL)]["min.insync.replicas"]["value"] == "2"
            # the broker to kill: the leader of central's changelog (the hardest one: every
            # transaction of central writes there)
            (changelog,) = admin.describe_topics([bus.topic(CHANGELOG)])
            victim = changelog["partitions"][0]["leader_id"]
        finally:
            admin.close()
        net.start_cp("CP-01")
        d = net.start_driver("D-1", ["CP-01"], "--charge-seconds", "12")
        observer = Observer(bus)
        try:
            d.wait_line("live at CP-01: 1.00 kWh", timeout=40)
            pid = json.loads((data / f"node-{victim}" / "broker.pid").read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            (auth,) = observer.wait(m.Authorization, driver_id="D-1", timeout=30)
            ticket = observer.wait(m.Ticket, session_id=auth.session_id, timeout=60)[0]
            # the test's own reader may see the ticket first (its partitions' leaders moved
            # at different moments): wait for the final reading too, then compare
            final = observer.wait(m.Telemetry, session_id=auth.session_id, final=True,
                                  timeout=30)
            assert len(final) == 1 and ticket.consumo_kwh == final[0].consumo_kwh, \
                net.context()
            d.wait_line(f"TICKET at CP-01: {ticket.consumo_kwh:.2f} kWh", timeout=30)
            assert d.popen.wait(30) == 0
            assert len(observer.of(m.Ticket, session_id=auth.session_id)) == 1
            # a new supply while the broker is still down: served by the other two
            d2 = net.start_driver("D-2", ["CP-01"], "--charge-seconds", "1")
            d2.wait_line("TICKET at CP-01", timeout=60)
            assert d2.popen.wait(30) == 0
        finally:
            observer.close()
    # the dead broker restarts and rejoins
    again = run_evc(["broker", "start", "--nodes", "3", "--listen",
                     kafka.split(",")[0], "--data-dir", str(data), "--timeout", "180"],
                    timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    wait_for(lambda: run_evc(["broker", "status", "--data-dir", str(data)]).stdout.count(
        "running at") == 3, 30, "three brokers running again")
    assert net.central is not None and net.central.popen.poll() is None
    assert "Traceback" not in net.central.output + d.output

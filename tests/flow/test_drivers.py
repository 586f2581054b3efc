"""Drivers end to end: requests, authorizations, live telemetry and tickets (F2, R6)."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter

import pytest

from evc.driver.driver import file_identity
from evc.protocol import messages as m
from evc.protocol.topics import REQUESTS
from tests.helpers import Proc, free_port, run_evc, wait_for
from tests.network import Network, signed

pytestmark = pytest.mark.central()


def driver(net: Network, driver_id: str, lines: list[str], *extra: str) -> Proc:
    path = net.tmp / f"{driver_id}.txt"
    path.write_text("".join(f"{x}\n" for x in lines))
    proc = Proc(["driver", net.kafka, driver_id, "--file", str(path),
                 "--topic-prefix", net.prefix, *extra], name=f"driver {driver_id}")
    net.procs.append(proc)
    return proc


def send_request(bus, driver_id: str, cp_id: str) -> m.ChargeRequest:
    req = signed(m.ChargeRequest(driver_id=driver_id, cp_id=cp_id))
    bus.send(REQUESTS, req, cp_id)
    bus.flush()
    return req


def test_two_drivers_ten_requests_three_cps(net, observer):
    for cp in ("CP-01", "CP-02", "CP-03"):
        net.start_cp(cp)
    d1 = driver(net, "D-1", ["# first driver", "CP-01", "", "CP-02", "CP-03", "CP-01",
                             "CP-99"], "--charge-seconds", "2")
    d2 = driver(net, "D-2", ["CP-03", "CP-02", "CP-01", "CP-02", "CP-03"],
                "--charge-seconds", "2")
    assert d1.popen.wait(120) == 0, d1.output
    assert d2.popen.wait(120) == 0, d2.output
    requests = observer.of(m.ChargeRequest)
    assert len(requests) == 10
    answers = Counter(a.request_id for a in observer.of(m.Authorization))
    assert {r.msg_id for r in requests} == set(answers) and set(answers.values()) == {1}
    authorized = [a for a in observer.of(m.Authorization) if a.authorized]
    denied = [a for a in observer.of(m.Authorization) if not a.authorized]
    assert any("unknown charge point CP-99" in a.reason for a in denied)
    for auth in authorized:
        tickets = observer.of(m.Ticket, session_id=auth.session_id)
        finals = observer.of(m.Telemetry, session_id=auth.session_id, final=True)
        assert len(tickets) == 1 and len(finals) == 1, auth
        assert tickets[0].consumo_kwh == finals[0].consumo_kwh > 0
        assert tickets[0].importe_eur == finals[0].importe_eur
        assert tickets[0].driver_id == auth.driver_id
    # the 4 s pause: each next request comes >= 4 s after the previous answer or ticket
    for who in ("D-1", "D-2"):
        mine = sorted(observer.of(m.ChargeRequest, driver_id=who), key=lambda r: r.ts)
        for prev, nxt in zip(mine, mine[1:], strict=False):
            auth = observer.of(m.Authorization, request_id=prev.msg_id)[0]
            end = auth.ts
            if auth.authorized:
                end = observer.of(m.Ticket, session_id=auth.session_id)[0].ts
            assert nxt.ts - end >= 4.0 - 0.05, (who, nxt.ts - end)
    out = d1.output
    assert re.search(r"D-1: live at CP-0\d: \d+\.\d\d kWh", out)
    assert "TICKET at CP-01" in out and "ended: finished" in out
    assert "done: 5 requested" in out


def test_race_for_one_cp_authorizes_exactly_one(net, bus, observer):
    net.start_cp("CP-01")
    reqs = [send_request(bus, f"D-{i}", "CP-01") for i in range(4, 8)]
    answers = [observer.wait(m.Authorization, request_id=r.msg_id)[0] for r in reqs]
    assert sum(a.authorized for a in answers) == 1
    assert all("busy" in a.reason for a in answers if not a.authorized)


def test_duplicate_delivery_is_answered_once(net, bus, observer):
    net.start_cp("CP-01")
    req = signed(m.ChargeRequest(driver_id="D-1", cp_id="CP-01"))
    for _ in range(3):
        bus.send(REQUESTS, req, "CP-01")
    bus.flush()
    observer.wait(m.Authorization, request_id=req.msg_id)
    later = send_request(bus, "D-2", "CP-02")  # everything before it was applied
    observer.wait(m.Authorization, request_id=later.msg_id)
    assert len(observer.of(m.Authorization, request_id=req.msg_id)) == 1


def test_one_supply_per_driver(net, bus, observer):
    net.start_cp("CP-01")
    net.start_cp("CP-02")
    first = send_request(bus, "D-1", "CP-01")
    assert observer.wait(m.Authorization, request_id=first.msg_id)[0].authorized
    second = send_request(bus, "D-1", "CP-02")
    answer = observer.wait(m.Authorization, request_id=second.msg_id)[0]
    assert not answer.authorized and "already has a supply running" in answer.reason


def test_denials_for_stopped_faulted_disconnected_unknown(net, bus, observer):
    net.start_cp("CP-01")
    net.start_cp("CP-02")
    net.central.send("stop CP-01")
    net.wait_state("CP-01", "Parado")
    net.engines["CP-02"].send("f")
    net.wait_state("CP-02", "Averiado")
    cases = {"CP-01": "stopped by the operator", "CP-02": "fault",
             "CP-03": "disconnected", "CP-404": "unknown charge point"}
    for i, (cp, reason) in enumerate(cases.items(), start=1):
        req = send_request(bus, f"D-{i}", cp)
        answer = observer.wait(m.Authorization, request_id=req.msg_id)[0]
        assert not answer.authorized and reason in answer.reason, answer


def test_operator_stop_and_engine_fault_still_ticket_the_driver(net, observer):
    net.start_cp("CP-01")
    net.start_cp("CP-02")
    d1 = driver(net, "D-1", ["CP-01"], "--charge-seconds", "60")
    d2 = driver(net, "D-2", ["CP-02"], "--charge-seconds", "60")
    d1.wait_line("live at CP-01", count=2)
    d2.wait_line("live at CP-02", count=2)
    net.central.send("stop CP-01")
    net.engines["CP-02"].send("f")
    d1.wait_line("ended: stopped")
    d2.wait_line("ended: fault")
    for who, cp in (("D-1", "CP-01"), ("D-2", "CP-02")):
        ticket = observer.wait(m.Ticket, driver_id=who)[0]
        final = observer.of(m.Telemetry, session_id=ticket.session_id, final=True)[0]
        assert ticket.consumo_kwh == final.consumo_kwh and ticket.cp_id == cp
    assert d1.popen.wait(15) == 0 and d2.popen.wait(15) == 0
    sessions = [s for s in net.db_json()["sessions"].values() if s["status"] == "closed"]
    assert {s["reason"] for s in sessions} == {"stopped", "fault"}


def test_unplug_at_the_engine_ends_the_supply(net, observer):
    net.start_cp("CP-01")
    d = driver(net, "D-1", ["CP-01"], "--charge-seconds", "60")
    d.wait_line("live at CP-01", count=2)
    net.engines["CP-01"].send("u")
    d.wait_line("ended: unplugged")
    assert d.popen.wait(15) == 0


def test_a_driver_waits_while_central_is_away(kafka, prefix, tmp_path, procs, bus):
    net = Network(kafka, prefix, tmp_path, procs)
    net.start_central()  # it registers the drivers and writes their credentials ...
    net.central.stop()  # ... and goes away
    path = tmp_path / "r.txt"
    path.write_text("CP-01\n")
    proc = Proc(["driver", kafka, "D-1", "--file", str(path), "--timeout", "1.5",
                 "--topic-prefix", prefix], name="driver")
    procs.append(proc)
    proc.wait_line("central unavailable since", timeout=15)
    assert proc.popen.poll() is None  # it waits instead of giving up
    net.start_central()
    proc.wait_line("central is back", timeout=15)
    proc.wait_line("DENIED at CP-01: CP-01 is disconnected", timeout=15)
    assert proc.popen.wait(30) == 0
    assert "central did not answer" not in proc.output


def test_no_answer_from_a_live_central(kafka, prefix, tmp_path, procs, bus):
    """Central's heartbeat is there but it never answers: the timeout counts."""
    from evc.protocol.topics import CENTRAL_KEY, NETWORK

    path = tmp_path / "r.txt"
    path.write_text("CP-01\n")
    stop = threading.Event()

    def fake_heartbeats():
        while not stop.wait(0.5):
            bus.send(NETWORK, m.CentralStatus(central="test", started_at=0.0), CENTRAL_KEY)

    beats = threading.Thread(target=fake_heartbeats)
    beats.start()
    try:
        proc = Proc(["driver", kafka, "D-1", "--file", str(path), "--timeout", "1.5",
                     "--topic-prefix", prefix], name="driver")
        procs.append(proc)
        assert proc.popen.wait(30) == 0
    finally:
        stop.set()
        beats.join()
    assert "central did not answer within 1.5 s" in proc.output


def test_driver_bad_input(tmp_path, kafka, prefix, bus):
    missing = run_evc(["driver", kafka, "D-1", "--file", str(tmp_path / "nope.txt")])
    assert missing.returncode == 1
    assert "request file" in missing.stderr and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text("CP 01 with spaces\n")
    result = run_evc(["driver", kafka, "D-1", "--file", str(bad), "--topic-prefix", prefix])
    assert result.returncode == 0
    assert "bad.txt:1:" in result.stdout and "skipped" in result.stdout
    port = free_port()
    unreachable = run_evc(["driver", f"127.0.0.1:{port}", "D-1", "--file", str(bad)],
                          env={"EVC_DRIVER_TIMEOUT": "1"}, timeout=60)
    assert unreachable.returncode == 1
    assert f"cannot reach Kafka broker at 127.0.0.1:{port}" in unreachable.stderr
    badaddr = run_evc(["driver", "no-port-here", "D-1", "--file", str(bad)])
    assert badaddr.returncode == 1 and "bad Kafka address" in badaddr.stderr


def test_sessions_and_tickets_are_persisted(net, observer):
    net.start_cp("CP-01")
    d = driver(net, "D-1", ["CP-01"], "--charge-seconds", "1")
    assert d.popen.wait(30) == 0
    ticket = observer.wait(m.Ticket, driver_id="D-1")[0]
    wait_for(lambda: any(s.get("ticket_id") == ticket.msg_id
                         for s in net.db_json()["sessions"].values()), 5, "session stored")


def test_interactive_prompt_without_a_file(net, procs):
    net.start_cp("CP-01")
    proc = Proc(["driver", net.kafka, "D-5", "--charge-seconds", "1", "--topic-prefix",
                 net.prefix], name="driver D-5")
    procs.append(proc)
    proc.send("CP-01")
    proc.wait_line("TICKET at CP-01", timeout=20)
    proc.send("CP-404")
    proc.wait_line("DENIED at CP-404: unknown charge point CP-404", timeout=20)
    proc.send("")  # an empty line ends the session
    assert proc.popen.wait(15) == 0
    assert "done: 2 requested, 1 authorized, 1 denied" in proc.output


def test_a_journal_of_another_network_is_set_aside_not_followed(net, tmp_path):
    """Killed mid-supply, started again later on a fresh broker with the same id, folder
    and file: the request in flight was the old network's. The driver says so once and
    serves its file at once (it used to re-send that end request and wait out the 60-s
    ticket timeout)."""
    path = net.tmp / "D-1.txt"
    path.write_text("CP-01\n")
    old = m.ChargeRequest(driver_id="D-1", cp_id="CP-20")
    answer = m.Authorization(driver_id="D-1", cp_id="CP-20", request_id=old.msg_id,
                             authorized=True, session_id="s-old", price_eur_kwh=0.3)
    state = tmp_path / "driver-state"
    state.mkdir(exist_ok=True)
    (state / "driver-D-1.json").write_text(json.dumps({
        "driver_id": "D-1", "network": f"an-old-cluster/{net.prefix}",
        "file": file_identity(path), "next": 0,
        "current": {"request": old.to_wire(), "answer": answer.to_wire(), "line": 0,
                    "authorized_at": 0.0, "end_sent": 1.0}}))
    proc = driver(net, "D-1", ["CP-01"])
    proc.wait_line("from another network", timeout=20)
    assert proc.popen.wait(30) == 0, proc.output
    assert "DENIED at CP-01" in proc.output  # its file, served (no monitor: disconnected)
    assert "back after a stop" not in proc.output and "CP-20" not in proc.output
    assert list(state.glob("driver-D-1.json.other-network-*"))  # kept beside, not lost
    assert json.loads((state / "driver-D-1.json").read_text())["network"].endswith(
        f"/{net.prefix}")

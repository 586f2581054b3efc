"""Charge points end to end: real broker, real central, monitors and engines (F1, F3-F5)."""

from __future__ import annotations

import signal
import statistics
import time

from benchmarks.procinfo import cpu_seconds
from evc.protocol import messages as m
from evc.protocol.topics import REQUESTS
from tests.helpers import Proc, free_port, wait_for
from tests.network import Network, Observer, signed


def request(bus, driver: str, cp: str) -> m.ChargeRequest:
    req = signed(m.ChargeRequest(driver_id=driver, cp_id=cp))
    bus.send(REQUESTS, req, cp)
    bus.flush()
    return req


def test_f1_registration_makes_the_cp_activado_and_is_persisted(net):
    net.start_central()
    net.start_cp("CP-01")
    assert "Desconectado -> Activado" in net.state_lines("CP-01")[-1]

    def stored() -> dict:
        return next((r for r in net.db_json()["cps"].values() if r["cp_id"] == "CP-01"), {})

    # the log line is written while the batch is applied; the file once it is committed
    wait_for(lambda: stored().get("state") == "Activado", 5, "CP-01 stored as Activado")
    rec = stored()
    assert rec["location"] == "C/Italia 5"
    # an idle central sleeps: no thread spins (a busy loop would take a whole core)
    before = cpu_seconds(net.central.popen.pid)
    time.sleep(2.0)  # measuring an interval, not waiting for a condition
    assert cpu_seconds(net.central.popen.pid) - before < 0.5, "central busy while idle"
    assert rec["last_seen"] > time.time() - 60


def test_f3_telemetry_every_second_with_the_seed_keys(net, bus, observer):
    net.start_central()
    net.start_cp("CP-01")
    req = request(bus, "D-1", "CP-01")
    auth = observer.wait(m.Authorization, request_id=req.msg_id)[0]
    assert auth.authorized
    net.wait_state("CP-01", "Suministrando")
    tele = observer.wait(m.Telemetry, count=5, session_id=auth.session_id)
    gaps = [b.ts - a.ts for a, b in zip(tele, tele[1:], strict=False)]
    assert 0.5 < statistics.median(gaps) < 1.5, gaps  # one reading a second (not a race)
    kwh = [t.consumo_kwh for t in tele]
    assert kwh == sorted(kwh) and kwh[-1] > kwh[0]
    for t in tele:
        assert t.importe_eur == round(t.consumo_kwh * 0.35, 2)
        assert t.driver_id == "D-1" and t.cp_id == "CP-01"
    raw = tele[-1].to_wire()
    assert {"cp_id", "driver_id", "consumo_kwh", "importe_eur"} <= set(raw)


def test_f4_engine_fault_ends_the_supply_and_recovers(net, bus, observer):
    net.start_central()
    net.start_cp("CP-01")
    req = request(bus, "D-1", "CP-01")
    auth = observer.wait(m.Authorization, request_id=req.msg_id)[0]
    observer.wait(m.Telemetry, count=2, session_id=auth.session_id)
    t0 = time.monotonic()
    net.engines["CP-01"].send("f")
    net.wait_state("CP-01", "Averiado", timeout=2.5)
    assert time.monotonic() - t0 < 2.5
    ticket = observer.wait(m.Ticket, session_id=auth.session_id)[0]
    final = observer.of(m.Telemetry, session_id=auth.session_id, final=True)
    assert ticket.reason is m.EndReason.FAULT
    assert len(final) == 1 and ticket.consumo_kwh == final[0].consumo_kwh
    net.engines["CP-01"].send("r")
    net.wait_state("CP-01", "Activado", timeout=3)
    net.engines["CP-01"].send("h")  # hang: no answer at all is a fault too
    net.wait_state("CP-01", "Averiado", timeout=3)
    net.monitors["CP-01"].wait_line("did not answer")
    net.engines["CP-01"].send("r")
    net.wait_state("CP-01", "Activado", timeout=3)


def test_f5_killed_monitor_is_desconectado_within_a_second(net):
    net.start_central()
    net.start_cp("CP-01")
    net.monitors["CP-01"].kill()
    net.wait_state("CP-01", "Desconectado", timeout=10)  # how fast: benchmarks/scale.py
    assert "closed by monitor" in net.state_lines("CP-01")[-1]


def test_frozen_monitor_is_lost_after_the_heartbeat_timeout_and_comes_back(net):
    net.start_central("--heartbeat-timeout", "2")
    net.start_cp("CP-01")
    monitor = net.monitors["CP-01"]
    t0 = time.monotonic()
    monitor.signal(signal.SIGSTOP)
    try:
        net.wait_state("CP-01", "Desconectado", timeout=15)
        assert time.monotonic() - t0 > 1.5  # not before the heartbeat timeout (2 s)
        assert "silent" in net.state_lines("CP-01")[-1]
    finally:
        monitor.signal(signal.SIGCONT)
    net.wait_state("CP-01", "Activado", timeout=10)


def test_operator_stop_and_resume_reach_the_engine(net, observer):
    central = net.start_central()
    net.start_cp("CP-01")
    net.start_cp("CP-02")
    central.send("stop CP-01")
    net.wait_state("CP-01", "Parado")
    net.engines["CP-01"].wait_line("stopped by central")
    observer.wait(m.StopCP, cp_id="CP-01")
    central.send("reanudar CP-01")
    net.wait_state("CP-01", "Activado")
    net.engines["CP-01"].wait_line("resumed by central")
    central.send("stop all")
    net.wait_state("CP-01", "Parado")
    net.wait_state("CP-02", "Parado")
    central.send("resume all")
    net.wait_state("CP-02", "Activado")
    central.send("stop CP-77")
    central.wait_line("unknown charge point 'CP-77'; nothing changed")
    central.send("fly away")
    central.wait_line("unknown command 'fly'")
    assert net.current_state("CP-01") == "Activado"


def test_a_stopped_cp_stays_parado_through_a_fault(net):
    central = net.start_central()
    net.start_cp("CP-01")
    central.send("stop CP-01")
    net.wait_state("CP-01", "Parado")
    net.engines["CP-01"].send("f")
    net.wait_state("CP-01", "Averiado")
    net.engines["CP-01"].send("r")
    net.wait_state("CP-01", "Parado")


def test_central_restart_cps_register_again_by_themselves(net):
    central = net.start_central()
    net.start_cp("CP-01")
    assert central.stop(5) == 0
    for line in net.monitors["CP-01"].lines:
        assert "Traceback" not in line
    net.monitors["CP-01"].wait_line("retrying in")
    again = net.start_central()
    wait_for(lambda: any("Desconectado -> Activado" in ln for ln in again.lines), 15,
             "CP-01 registering with the new central")
    net.monitors["CP-01"].wait_line("registered with central", count=2)  # a second time


def test_unknown_cp_is_refused_and_the_monitor_says_why(net):
    net.start_central()
    net.start_engine("CP-42")
    monitor = net.start_monitor("CP-42", expect_registered=False)
    monitor.wait_line("central refused the registration: CP-42 is not in central's registry")
    assert monitor.popen.wait(5) == 1


def test_second_monitor_for_a_connected_cp_is_refused(net):
    net.start_central()
    net.start_cp("CP-01")
    first = net.monitors["CP-01"]
    intruder = net.start_monitor("CP-01", expect_registered=False)
    net.monitors["CP-01"] = first
    intruder.wait_line("already connected from another monitor")
    assert first.popen.poll() is None
    assert net.current_state("CP-01") == "Activado"
    assert len(net.state_lines("CP-01")) == 1  # the first monitor was never disturbed
    intruder.kill()


def test_a_fresh_central_answers_at_once_every_time(kafka, tmp_path, procs):
    """Central reads its partitions by assignment, not by a group join that once left it
    with no partition at all (deaf for minutes): three fresh starts, three answers."""
    import uuid

    from evc.bus import KafkaBus

    for i in range(3):
        prefix = f"fresh{uuid.uuid4().hex[:8]}-"  # topics that do not exist yet
        (tmp_path / f"run{i}").mkdir()
        net = Network(kafka, prefix, tmp_path / f"run{i}", procs)
        central = net.start_central()
        with KafkaBus(kafka, prefix=prefix, client_id="evc-test") as bus:
            observer = Observer(bus)
            try:
                req = request(bus, "D-1", "CP-01")
                auth = observer.wait(m.Authorization, request_id=req.msg_id, timeout=10)[0]
                assert auth.code is m.DenyCode.DISCONNECTED
            finally:
                observer.close()
        central.stop()


def test_garbage_on_the_engine_port_harms_only_itself(net):
    import socket
    import struct

    net.start_central()
    net.start_cp("CP-01")
    port = net.engine_ports["CP-01"]
    for blob in (b"\xff" * 50, struct.pack(">I", 0xFFFFFFFF),
                 struct.pack(">I", 40) + b'{"type":"health_check","cp_id":"x","ts":1e999}',
                 struct.pack(">I", 20000) + b"[" * 10000 + b"]" * 10000,
                 struct.pack(">I", 30) + b'{"type":"start_supply"}' + b" " * 7):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(blob)
            sock.settimeout(5)
            try:
                assert sock.recv(100) == b""  # the engine closes that connection
            except ConnectionResetError:
                pass
    engine = net.engines["CP-01"]
    assert engine.popen.poll() is None and "Traceback" not in engine.output
    assert net.current_state("CP-01") == "Activado"
    assert len(net.state_lines("CP-01")) == 1  # the monitor's checks never failed


def test_a_second_central_never_splits_the_network(net, kafka, prefix, tmp_path):
    first = net.start_central()
    # the same database: refused by its lock
    same_db = Proc(["central", str(free_port()), kafka, str(net.db), "--listen-host",
                    "127.0.0.1", "--topic-prefix", prefix], name="second central")
    net.procs.append(same_db)
    assert same_db.popen.wait(30) == 1
    assert "is in use by another central" in same_db.output
    # another database on the same broker and prefix: a standby (never a second active)
    other_db = Proc(["central", str(free_port()), kafka, str(tmp_path / "other.json"),
                     "--listen-host", "127.0.0.1", "--topic-prefix", prefix],
                    name="third central")
    net.procs.append(other_db)
    other_db.wait_line("standby: following the active central", timeout=40)
    assert "central ready" not in other_db.output
    assert other_db.stop() == 0
    assert "Traceback" not in same_db.output + other_db.output
    assert first.popen.poll() is None
    # the first one killed: the same database restarts as the active central at once
    first.kill()
    net.start_central()

"""`evc demo`: the whole network in one command, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request

from tests.helpers import EVC, Proc, free_port, wait_for


def children_of(parent: int) -> list[int]:
    kids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            kids.append(int(pid))
    return kids


def _board(port: int) -> dict | None:
    """The web board's JSON once it lists CPs; None until then."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/board", timeout=5) as res:
            doc = json.loads(res.read())
    except OSError:
        return None
    return doc if doc.get("cps") else None


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_demo_runs_the_network_and_stops_cleanly(kafka, tmp_path):
    run_dir = tmp_path / "run"
    demo = Proc(["demo", "--kafka", kafka, "--cps", "3", "--drivers", "2", "--requests", "2",
                 "--charge-seconds", "2", "--run-dir", str(run_dir), "--display", "plain",
                 "--central-port", str(free_port()), "--seed", "1", "--once",
                 "--web", "none", "--ocpp", "1"], name="demo")
    try:
        demo.wait_line("central ready", timeout=60)
        demo.wait_line("demo: OCPP gateway at ws://", timeout=30)
        for cp in ("CP-01", "CP-02", "CP-03", "OC-01"):
            wait_for(lambda cp=cp: [ln for ln in demo.lines
                                    if ln.split()[1:2] == [cp] and ln.endswith(")")
                                    and "-> Activado" in ln], 20, f"{cp} Activado")
        demo.wait_line("ticket to D-01", timeout=60)
        demo.wait_line("ticket to D-02", timeout=60)
        wait_for(lambda: "done: 2 requested" in (run_dir / "driver-D-01.log").read_text(), 60,
                 "driver D-01 to finish its file")
        # an engine key pressed through the run folder
        with open(run_dir / "engine-CP-01.keys", "w") as keys:
            keys.write("f\n")
        demo.wait_line("CP-01 Activado -> Averiado", timeout=10)
        kids = children_of(demo.popen.pid)
        # engines, monitors, central, the gateway and its charger (drivers may be done)
        assert len(kids) >= 3 * 2 + 3
    finally:
        demo.popen.send_signal(signal.SIGINT)
        try:
            demo.popen.wait(10)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert demo.popen.returncode == 0
    assert "demo: stopped" in demo.output
    assert "Traceback" not in demo.output
    wait_for(lambda: not [k for k in kids if alive(k)], 3, "no process left behind")
    for name in ("central.log", "engine-CP-01.log", "monitor-CP-02.log", "driver-D-02.log",
                 "ocpp-gateway.log", "charger-OC-01.log",
                 "central.json", "charging_points.csv", "requests-D-01.txt"):
        assert (run_dir / name).exists(), name
    for log in run_dir.glob("*.log"):
        assert "Traceback" not in log.read_text(), log


def test_demo_starts_its_own_broker_loops_and_quits_from_the_console(tmp_path):
    """No broker at --kafka: the demo runs one (evc broker) and stops it afterwards; with
    a driver done with its file starts it again (the default; --once does not); the web
    board is served beside central's."""
    port, web_port = free_port(), free_port()
    run_dir = tmp_path / "run"
    demo = Proc(["demo", "--kafka", f"127.0.0.1:{port}", "--cps", "2", "--drivers", "1",
                 "--requests", "1", "--charge-seconds", "1", "--run-dir", str(run_dir),
                 "--display", "plain", "--central-port", str(free_port()),
                 "--web", f"127.0.0.1:{web_port}"],
                name="demo")
    try:
        demo.wait_line(f"no broker answers at 127.0.0.1:{port}: starting one", timeout=10)
        demo.wait_line("central ready", timeout=120)
        demo.wait_line("ticket to D-01", timeout=60)
        demo.wait_line("ticket to D-01", count=2, timeout=60)  # the file, once more
        demo.wait_line(f"demo: web board at http://127.0.0.1:{web_port}/", timeout=5)
        board = wait_for(lambda: _board(web_port), 30, "the demo's web board with its CPs")
        assert {c["cp_id"] for c in board["cps"]} == {"CP-01", "CP-02"}
        demo.send("quit")  # central's console is the demo's console
        assert demo.popen.wait(30) == 0
    finally:
        demo.kill()
    assert "demo: broker stopped" in demo.output
    result = subprocess.run(EVC + ["broker", "status", "--data-dir", str(run_dir / "broker")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result.stdout

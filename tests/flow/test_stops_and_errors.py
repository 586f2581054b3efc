"""Every component: one clear line for an unreachable broker or a bad file, and a clean
stop within 2 s. (Bad arguments: tests/unit/test_cli.py.)"""

from __future__ import annotations

import signal
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import Proc, free_port, one_clear_line, run_evc
from tests.network import Network


def test_unreachable_broker(tmp_path):
    port = free_port()
    env = {"EVC_CENTRAL_LISTEN_HOST": "127.0.0.1"}
    runs = (["central", str(free_port()), f"127.0.0.1:{port}", str(tmp_path / "c.json")],
            ["cp-engine", f"127.0.0.1:{port}", "--listen", str(free_port())],
            ["driver", f"127.0.0.1:{port}", "D-1", "--file", "data/requests.txt"],
            ["ocpp", f"127.0.0.1:{port}", "127.0.0.1:5000", "--listen", str(free_port()),
             "--state-dir", str(tmp_path / "gw")])
    # together: each tries the broker for its whole connect timeout before it gives up
    with ThreadPoolExecutor(len(runs)) as pool:
        results = list(pool.map(lambda args: run_evc(args, env=env, timeout=60), runs))
    for result in results:
        one_clear_line(result, f"cannot reach Kafka broker at 127.0.0.1:{port}")


def test_central_bad_files_and_busy_port(tmp_path, kafka):
    broken = tmp_path / "broken.json"
    broken.write_text("{{{")
    one_clear_line(run_evc(["central", str(free_port()), kafka, str(broken)]),
                   "not a valid evc database")
    one_clear_line(run_evc(["central", str(free_port()), kafka, str(tmp_path / "c.json"),
                            "--cps", str(tmp_path / "missing.csv")]),
                   "cannot read charge point file")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("CP-01,somewhere\n")
    one_clear_line(run_evc(["central", str(free_port()), kafka, str(tmp_path / "c.json"),
                            "--cps", str(bad_csv)]), "bad.csv:1: expected id,location,price")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_clear_line(run_evc(["central", str(port), kafka, str(tmp_path / "c.json"),
                                "--listen-host", "127.0.0.1"]),
                       f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_every_component_stops_cleanly_mid_supply(kafka, prefix, tmp_path, procs, sig):
    """Exit 0, no traceback, at the busiest moment (within 2 s: benchmarks/stops.py).
    Each signal reaches the component's whole process group, as a terminal's Ctrl+C and
    a closed terminal's hangup do (central's TCP process is in it)."""
    net = Network(kafka, prefix, tmp_path, procs)
    net.start_central()
    # an evc CP and an OCPP charger behind its gateway, started together
    net.start_gateway()
    charger = net.start_charger("CP-02", booted=False)
    net.start_cp("CP-01")
    net.wait_state("CP-02", "Activado")
    requests = tmp_path / "r.txt"
    requests.write_text("CP-01\n")
    driver = Proc(["driver", kafka, "D-1", "--file", str(requests), "--charge-seconds", "60",
                   "--topic-prefix", prefix], name="driver")
    procs.append(driver)
    ocpp_driver = Proc(["driver", kafka, "D-2", "--charge-seconds", "60", "--topic-prefix",
                        prefix], name="driver D-2")
    procs.append(ocpp_driver)
    ocpp_driver.send("CP-02")
    driver.wait_line("live at CP-01")  # mid-supply: the busiest moment to stop
    ocpp_driver.wait_line("live at CP-02")
    for proc in (driver, ocpp_driver, charger, net.gateway, net.monitors["CP-01"],
                 net.engines["CP-01"], net.central):
        proc.signal(sig, group=True)
        code = proc.popen.wait(10)
        assert code == 0, f"{proc.name} exit {code}:\n{proc.output[-1500:]}"
        proc._reader.join(2)
        assert "Traceback" not in proc.output and "CRITICAL" not in proc.output, proc.output


def test_gateway_bad_arguments_and_files(tmp_path, kafka):
    missing = run_evc(["ocpp", kafka, "127.0.0.1:5000", "--listen", str(free_port()),
                       "--cert", str(tmp_path / "missing.pem"), "--key",
                       str(tmp_path / "missing.key")])
    assert missing.returncode == 2 and "does not exist" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    one_clear_line(run_evc(["ocpp", kafka, "127.0.0.1:5000", "--listen", str(free_port()),
                            "--cert", str(bad), "--key", str(bad)]), "cannot use")
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    (state / f"ocpp-{port}.json").write_text("{{{")
    one_clear_line(run_evc(["ocpp", kafka, "127.0.0.1:5000", "--listen", str(port),
                            "--state-dir", str(state)]), "not a valid evc journal")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        one_clear_line(run_evc(["ocpp", kafka, "127.0.0.1:5000", "--listen",
                                f"127.0.0.1:{taken}", "--state-dir", str(tmp_path / "s2")]),
                       f"cannot listen on 127.0.0.1:{taken}")

"""How fast each component stops on Ctrl+C (SIGINT) and SIGTERM, at its busiest moment.

    python -m benchmarks.stops [--kafka HOST:PORT] [--rounds 3] [--json]

Starts central, a charge point (engine + monitor), a driver mid-supply and `evc status`
against a real broker, then stops each with a signal and times its exit. The promise is
2 s for every one of them; this prints the worst of --rounds rounds per component and
signal (the tests only check that every stop is clean).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from evc.net import free_port

EVC = [sys.executable, "-m", "evc.cli"]


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    # one credentials folder for central (which writes them) and the CP (which proves them)
    env = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1",
               EVC_CREDENTIALS_DIR=str(log.parent / "credentials"))
    return subprocess.Popen(EVC + args, stdout=open(log, "ab"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, stdin=subprocess.PIPE, env=env,
                            start_new_session=True)


def wait_text(log: Path, text: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise SystemExit(f"{text!r} not in {log} after {timeout} s; it ends:\n"
                             + log.read_text(errors="replace")[-2000:])
        time.sleep(0.1)


def one_round(kafka: str, sig: int, tmp: Path) -> dict[str, float]:
    prefix = f"stops{uuid.uuid4().hex[:8]}-"
    common = ["--topic-prefix", prefix]
    state = tmp / prefix  # journals of this round only
    state.mkdir()
    port, eport = free_port(), free_port()
    (tmp / "cps.csv").write_text("CP-01,Calle 1,0.3\n")
    (tmp / "r.txt").write_text("CP-01\n")
    (tmp / "drivers.txt").write_text("D-1\n")
    logs = {name: tmp / f"{name}-{prefix}.log" for name in
            ("central", "engine", "monitor", "driver", "status")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    took: dict[str, float] = {}
    try:
        procs.update({
            "central": start(["central", str(port), kafka, str(tmp / f"{prefix}c.json"), "--cps",
                              str(tmp / "cps.csv"), "--drivers", str(tmp / "drivers.txt"),
                              "--listen-host", "127.0.0.1", "--display",
                              "plain", *common], logs["central"]),
        })
        wait_text(logs["central"], "central ready")
        procs["engine"] = start(["cp-engine", kafka, "--listen", f"127.0.0.1:{eport}",
                                 "--state-dir", str(state), *common], logs["engine"])
        wait_text(logs["engine"], "engine listening")
        procs["monitor"] = start(["cp-monitor", f"127.0.0.1:{eport}", f"127.0.0.1:{port}",
                                  "CP-01"], logs["monitor"])
        wait_text(logs["monitor"], "registered with central")
        procs["driver"] = start(["driver", kafka, "D-1", "--file", str(tmp / "r.txt"),
                                 "--charge-seconds", "60", "--state-dir", str(state), *common],
                                logs["driver"])
        procs["status"] = start(["status", kafka, *common], logs["status"])
        wait_text(logs["driver"], "live at CP-01")
        for name in ("driver", "status", "monitor", "engine", "central"):
            proc = procs[name]
            t0 = time.monotonic()
            proc.send_signal(sig)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait(5)
            took[name] = time.monotonic() - t0
            if code != 0 or "Traceback" in logs[name].read_text(errors="replace"):
                print(f"  {name}: exit {code}; see {logs[name]}")
    finally:  # whatever failed, nothing this round started lives on
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    worst: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="evc-stops-") as tmp:
        for sig in (signal.SIGINT, signal.SIGTERM):
            for _ in range(args.rounds):
                for name, seconds in one_round(args.kafka, sig, Path(tmp)).items():
                    key = f"{name} {signal.Signals(sig).name}"
                    worst[key] = max(worst.get(key, 0.0), seconds)
    for key, seconds in sorted(worst.items()):
        print(f"{key:24s} worst {seconds:5.2f} s" + ("  (over the 2 s promise)"
                                                      if seconds > 2 else ""))
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in worst.items()}))
    return 0 if all(v <= 2 for v in worst.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Long run: `evc demo` under random engine faults and monitor restarts; prints figures.

    python -m benchmarks.soak [--minutes 10] [--cps 10] [--drivers 5] [--kafka HOST:PORT]

Every few seconds one random action: an engine fault (f, then r a few seconds later), an
engine hang (h, then r), or a monitor killed with SIGKILL and started again. Samples the
memory (RSS) of every process each 30 s. At the end stops the demo with SIGINT and
checks from the driver logs and central's DB that every request was answered and every
authorized supply ticketed (a supply still running at the stop is reported apart).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.procinfo import children, rss_mb
from evc.store import read_database

EVC = [sys.executable, "-m", "evc.cli"]


def monitor_of(cmd: str) -> str | None:
    """The CP id of a `cp-monitor ENGINE CENTRAL CP_ID ...` command line."""
    argv = cmd.split()
    if "cp-monitor" not in argv:
        return None
    i = argv.index("cp-monitor")
    return argv[i + 3] if len(argv) > i + 3 else None


def label(cmd: str) -> str:
    argv = cmd.split()
    for kind in ("central", "cp-monitor", "cp-engine", "driver"):
        if kind in argv:
            i = argv.index(kind)
            if kind == "cp-monitor":
                return f"monitor {argv[i + 3]}"
            if kind == "cp-engine":
                return f"engine {argv[argv.index('--id') + 1]}" if "--id" in argv else "engine"
            if kind == "driver":
                return f"driver {argv[i + 2]}"
            return "central"
    return cmd[:30]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--cps", type=int, default=10)
    parser.add_argument("--drivers", type=int, default=5)
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--every", type=float, default=8.0, help="seconds between actions")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    run_dir = Path(args.run_dir or f"runs/soak-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    demo_out = open(run_dir.parent / f"{run_dir.name}.out", "w")  # noqa: SIM115
    demo = subprocess.Popen(EVC + [
        "demo", "--kafka", args.kafka, "--cps", str(args.cps), "--drivers", str(args.drivers),
        "--requests", "1000", "--charge-seconds", "5", "--display", "plain",
        "--run-dir", str(run_dir), "--seed", str(args.seed)],
        stdout=demo_out, stderr=subprocess.STDOUT, start_new_session=True)
    restarted: list[subprocess.Popen[bytes]] = []
    actions = {"fault": 0, "hang": 0, "monitor_restart": 0}
    memory: dict[str, list[float]] = {}
    deadline = time.monotonic() + args.minutes * 60
    next_sample = time.monotonic() + 20
    pending_recover: list[tuple[float, str]] = []
    try:
        time.sleep(20)  # the demo starts its children
        while time.monotonic() < deadline and demo.poll() is None:
            now = time.monotonic()
            for due, cp in list(pending_recover):
                if now >= due:
                    (run_dir / f"engine-{cp}.keys").write_text("r\n")
                    pending_recover.remove((due, cp))
            if now >= next_sample:
                for pid, cmd in children(demo.pid) + [(p.pid, " ".join(p.args))  # type: ignore[arg-type]
                                                      for p in restarted if p.poll() is None]:
                    if not cmd:
                        continue  # a zombie: killed, not yet reaped
                    name = label(cmd)
                    memory.setdefault(name, []).append(rss_mb(pid))
                next_sample = now + 30
            action = rng.choice(list(actions))
            cp = f"CP-{rng.randint(1, args.cps):02d}"
            if action in ("fault", "hang") and not any(c == cp for _, c in pending_recover):
                (run_dir / f"engine-{cp}.keys").write_text("f\n" if action == "fault" else "h\n")
                pending_recover.append((now + rng.uniform(2, 6), cp))
                actions[action] += 1
            elif action == "monitor_restart":
                victims = [(pid, cmd) for pid, cmd in children(demo.pid)
                           if monitor_of(cmd) == cp]
                victims += [(p.pid, " ".join(p.args)) for p in restarted  # type: ignore[arg-type]
                            if p.poll() is None and monitor_of(" ".join(p.args)) == cp]
                for pid, cmd in victims:
                    os.kill(pid, signal.SIGKILL)
                    argv = cmd.split()
                    i = argv.index("cp-monitor")
                    proc = subprocess.Popen(EVC + argv[i:i + 4], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
                    restarted.append(proc)
                    actions[action] += 1
            time.sleep(args.every)
    finally:
        for _, cp in pending_recover:
            (run_dir / f"engine-{cp}.keys").write_text("r\n")
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
        for proc in restarted:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(5)
    return report(run_dir, actions, memory, demo.returncode, as_json=args.json)


def report(run_dir: Path, actions: dict[str, int], memory: dict[str, list[float]],
           demo_rc: int | None, as_json: bool = False) -> int:
    print(f"run folder: {run_dir}  (demo exit code {demo_rc})")
    print("actions: " + ", ".join(f"{k} {v}" for k, v in actions.items()))
    requested = answered = authorized = tickets = 0
    for log in sorted(run_dir.glob("driver-*.log")):
        text = log.read_text(errors="replace")
        requested += len(re.findall(r": requested a charge", text))
        answered += len(re.findall(r": (AUTHORIZED|DENIED) at", text))
        authorized += len(re.findall(r": AUTHORIZED at", text))
        tickets += len(re.findall(r": TICKET at", text))
    print(f"drivers: {requested} requests, {answered} answered, {authorized} authorized, "
          f"{tickets} tickets")
    db = read_database(run_dir / "central.json")
    sessions = list(db.get("sessions", {}).values())
    closed = [s for s in sessions if s.get("status") == "closed"]
    reasons: dict[str, int] = {}
    for s in closed:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    print(f"central DB: {len(sessions)} sessions, {len(closed)} closed with a ticket; "
          "reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    crashed = [log.name for log in run_dir.glob("*.log")
               if "Traceback" in log.read_text(errors="replace")]
    print("tracebacks in logs: " + (", ".join(crashed) if crashed else "none"))
    print("memory (RSS MB, first -> last sample):")
    for name, samples in sorted(memory.items()):
        if samples:
            print(f"  {name:28s} {samples[0]:7.1f} -> {samples[-1]:7.1f}  "
                  f"(max {max(samples):.1f}, {len(samples)} samples)")
    in_flight = requested - answered
    unticketed = authorized - tickets
    print(f"unanswered at the stop: {in_flight} (at most one per driver may be in flight)")
    print(f"authorized without ticket in the driver log: {unticketed} (in flight at the stop)")
    ok = not crashed and in_flight <= 5 and unticketed <= 5
    print("RESULT: " + ("ok" if ok else "PROBLEMS"))
    if as_json:
        print(json.dumps({
            "actions": actions, "requests": requested, "answered": answered,
            "authorized": authorized, "tickets": tickets, "sessions": len(sessions),
            "closed": len(closed), "reasons": reasons, "tracebacks": crashed,
            "rss_mb": {name: [samples[0], samples[-1], max(samples)]
                       for name, samples in sorted(memory.items()) if samples},
            "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

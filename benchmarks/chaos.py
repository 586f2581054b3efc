"""Chaos: a network under demo-like load while its parts are killed (-9) and restarted.

    python -m benchmarks.chaos [--minutes 10] [--cps 10] [--drivers 5] [--every 4] [--json]
                               [--centrals 2] [--nodes 3]

Runs its own broker (restarted now and then on the same data), central, CPs (engine +
monitor) and drivers as real `evc` processes. Every --every seconds one random part is
killed with SIGKILL (central, an engine, a monitor or a driver) and started again after a
random delay of 1-8 s; every --broker-every seconds the broker is stopped and started
again 5-20 s later. At the end the drivers are stopped (they end their supplies), the
network drains, everything stops, and every topic is read from its beginning to print:
requests and answers, tickets lost and duplicated, kWh billed versus supplied (the
engines' readings and final figures, which their journals carry across their deaths),
processes that exited unasked, and the slowest recovery of a CP after its killed part
restarted. Every CP is on one site whose limit (``--site-limit``, 40 % of what the CPs
could draw together by default) central shares among the supplies: the report adds the
peak of what the engines said they supplied together, and how many readings found it
over the limit (none is the promise). The last line with --json is one JSON object with
these figures.

Redundancy: ``--centrals 2`` runs a standby central beside the active one (monitors are
given both); a central kill then kills the *active* one, and the report adds the longest
time without an active central. ``--nodes 3`` runs a three-broker cluster: a broker kill
kills one node at random (SIGKILL) and restarts it 5-20 s later; the network must not
notice.
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
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from evc.bus import KafkaBus
from evc.net import free_port
from evc.protocol import messages as m
from evc.protocol.topics import ALL_TOPICS, CHANGELOG

EVC = [sys.executable, "-m", "evc.cli"]
STATE = re.compile(r"^(\d\d:\d\d:\d\d) (\S+) \S+ -> (\S+)")


class Part:
    """One restartable process of the network; its output is appended to a log."""

    def __init__(self, name: str, args: list[str], log: Path, stdin: bool = False) -> None:
        self.name, self.args, self.log = name, args, log
        self.stdin = stdin
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False  # by us: its exit is expected
        self.unasked: list[str] = []
        self.started_at = 0.0
        self.log_from = 0  # where this run's output starts in the (appended) log

    def start(self) -> None:
        self.log_from = self.log.stat().st_size if self.log.exists() else 0
        out = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1",
                   EVC_CREDENTIALS_DIR=str(self.log.parent / "credentials"))
        self.proc = subprocess.Popen(EVC + self.args, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        out.close()
        self.killed = False
        self.started_at = time.time()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """An exit we did not ask for is counted (once per exit)."""
        if self.proc is not None and self.proc.poll() is not None and not self.killed:
            self.unasked.append(f"{self.name} exit {self.proc.returncode} at "
                                f"{time.strftime('%H:%M:%S')}")
            self.killed = True  # counted

    def output(self) -> str:
        """What the current run of this part printed."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_from)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def active(self) -> bool:
        """A central: alive, and its last word was becoming the active one."""
        text = self.output()
        became = text.rfind("central ready (active")
        left = max(text.rfind("standby: following"), text.rfind("stepped down"))
        return self.alive() and became > left

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.killed = True
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        if self.alive():
            assert self.proc is not None
            self.killed = True
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.unasked.append(f"{self.name} did not stop within {timeout:g} s")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def broker(cmd: str, port: int, ctrl: int, data: Path, nodes: int = 1) -> None:
    args = ["broker", cmd, "--data-dir", str(data)]
    if cmd == "start":
        args += ["--listen", f"127.0.0.1:{port}", "--timeout", "120"]
        args += ["--nodes", str(nodes)] if nodes > 1 else ["--controller-port", str(ctrl)]
    subprocess.run(EVC + args, check=cmd == "start", capture_output=True, timeout=300)


def kill_node(data: Path, node: int) -> None:
    """SIGKILL one broker of a cluster started with --nodes."""
    try:
        pid = json.loads((data / f"node-{node}" / "broker.pid").read_text())["pid"]
        os.kill(int(pid), signal.SIGKILL)
    except (OSError, ValueError, KeyError):
        pass


def free_run(length: int) -> int:
    """A port p with p .. p+length-1 all free (a local cluster's ports)."""
    from evc.net import Address, port_free

    for base in range(30000 + random.randrange(20000), 60000, 97):
        if all(port_free(Address("127.0.0.1", base + i)) for i in range(length)):
            return base
    raise SystemExit("no free run of ports for the cluster")


def read_everything(kafka: str, prefix: str) -> list[m.Message]:
    """Every record of every topic, from the beginning (malformed ones skipped)."""
    with KafkaBus(kafka, prefix=prefix, client_id="evc-chaos-reader") as bus:
        consumer = bus.consumer([t for t in ALL_TOPICS if t != CHANGELOG], from_beginning=True)
        out: list[m.Message] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 3.0:
            batch = consumer.poll(0.5)
            if batch:
                quiet_since = time.monotonic()
            out += [msg for msg, _ in batch]
        consumer.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--cps", type=int, default=10)
    parser.add_argument("--drivers", type=int, default=5)
    parser.add_argument("--every", type=float, default=4.0, help="seconds between kills")
    parser.add_argument("--broker-every", type=float, default=90.0,
                        help="seconds between broker restarts (0: none)")
    parser.add_argument("--site-limit", type=float, default=None,
                        help="every CP on one site with this limit in kW [default: 40 %% of "
                             "what the CPs could draw together; 0: no site]")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--centrals", type=int, choices=(1, 2), default=1,
                        help="2: a standby central; central kills hit the active one")
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1,
                        help="3: a three-broker cluster; broker kills hit one node")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    run = Path(args.run_dir or f"runs/chaos-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run.mkdir(parents=True, exist_ok=True)
    port, ctrl = (free_run(6), 0) if args.nodes > 1 else (free_port(), free_port())
    kafka = ",".join(f"127.0.0.1:{port + 2 * i}" for i in range(args.nodes))
    data = run / "broker"
    prefix = f"chaos{int(time.time())}-"
    central_ports = [free_port() for _ in range(args.centrals)]
    # a part restarted during a broker outage waits for the broker instead of exiting
    common = ["--topic-prefix", prefix, "--kafka-wait", "120"]
    print(f"run folder {run}; broker {kafka}", flush=True)
    broker("start", port, ctrl, data, args.nodes)
    with KafkaBus(kafka, prefix=prefix, client_id="evc-chaos") as bus:
        bus.ensure_topics()

    cps = [f"CP-{i:02d}" for i in range(1, args.cps + 1)]
    limit = round(22 * args.cps * 0.4, 1) if args.site_limit is None else args.site_limit
    site = "S" if limit else ""
    (run / "cps.csv").write_text("id,location,price_eur_kwh,site\n" + "".join(
        f"{cp},Calle {i},0.{30 + i % 10},{site}\n" for i, cp in enumerate(cps)))
    (run / "sites.csv").write_text(f"S,{limit}\n" if limit else "")
    (run / "drivers.txt").write_text("".join(f"D-{i:02d}\n"
                                             for i in range(1, args.drivers + 1)))
    centrals = [Part(f"central {i + 1}", [
        "central", str(cport), kafka, str(run / f"central{i + 1}.json"),
        "--listen-host", "127.0.0.1", "--cps", str(run / "cps.csv"),
        "--sites", str(run / "sites.csv"), "--drivers", str(run / "drivers.txt"),
        "--credentials-dir", str(run / "credentials"),
        "--display", "plain", "--log-level", "INFO", "--log-file",
        str(run / f"central{i + 1}.log"), *common], run / f"central{i + 1}.out")
        for i, cport in enumerate(central_ports)]
    engines, monitors, drivers = {}, {}, {}
    for cp in cps:
        eport = free_port()
        engines[cp] = Part(f"engine {cp}", [
            "cp-engine", kafka, "--listen", f"127.0.0.1:{eport}", "--id", cp,
            "--state-dir", str(run / "state"), *common], run / f"engine-{cp}.out")
        monitors[cp] = Part(f"monitor {cp}", [
            "cp-monitor", f"127.0.0.1:{eport}",
            ",".join(f"127.0.0.1:{p}" for p in central_ports), cp],
            run / f"monitor-{cp}.out")
    for i in range(1, args.drivers + 1):
        did = f"D-{i:02d}"
        path = run / f"requests-{did}.txt"
        path.write_text("".join(f"{rng.choice(cps)}\n" for _ in range(2000)))
        drivers[did] = Part(f"driver {did}", [
            "driver", kafka, did, "--file", str(path), "--charge-seconds", "5", "--pause", "1",
            "--state-dir", str(run / "state"), *common], run / f"driver-{did}.out")
    parts: list[Part] = [*centrals, *engines.values(), *monitors.values(), *drivers.values()]
    centrals[0].start()  # the first one is active (and creates the topics' state)
    wait_until(lambda: centrals[0].active(), 60)
    for part in parts[1:]:
        part.start()
    without: list[float] = []  # seconds without an active central, after each kill
    orphaned_at = 0.0  # monotonic: when the active central was killed (0: one is active)

    kills: Counter[str] = Counter()
    restarts: list[tuple[float, str, str]] = []  # (when restarted, kind, cp or "")
    pending: list[tuple[float, Part, str, str]] = []
    broker_down: list[tuple[float, float]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.minutes * 60
    next_kill = time.monotonic() + 15
    next_broker = time.monotonic() + args.broker_every if args.broker_every else float("inf")
    broker_back_at = 0.0
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            for part in parts:
                if not any(p is part for _, p, _, _ in pending):
                    part.check()
            for item in list(pending):
                due, part, kind, cp = item
                if now >= due:
                    pending.remove(item)
                    part.start()
                    with lock:
                        restarts.append((time.time(), kind, cp))
            if orphaned_at and any(c.active() for c in centrals):
                without.append(now - orphaned_at)
                orphaned_at = 0.0
            if broker_back_at and now >= broker_back_at:
                broker("start", port, ctrl, data, args.nodes)
                broker_down[-1] = (broker_down[-1][0], time.time())
                restarts.append((time.time(), "broker", ""))
                broker_back_at = 0.0
                next_broker = time.monotonic() + args.broker_every
            elif now >= next_broker and not broker_back_at:
                if args.nodes > 1:
                    kill_node(data, rng.randrange(1, args.nodes + 1))
                else:
                    broker("stop", port, ctrl, data)
                kills["broker"] += 1
                broker_down.append((time.time(), 0.0))
                broker_back_at = time.monotonic() + rng.uniform(5, 20)
            if now >= next_kill:
                next_kill = now + args.every
                kind = rng.choice(["central", "engine", "monitor", "driver"])
                if kind == "central":  # the active one (with a standby: a failover)
                    cp = ""
                    part = next((c for c in centrals if c.active()), centrals[0])
                    if part.active() and not orphaned_at:
                        orphaned_at = now
                elif kind == "driver":
                    part, cp = drivers[rng.choice(list(drivers))], ""
                else:
                    cp = rng.choice(cps)
                    part = engines[cp] if kind == "engine" else monitors[cp]
                if part.alive() and not any(p is part for _, p, _, _ in pending):
                    part.kill()
                    kills[kind] += 1
                    pending.append((now + rng.uniform(1, 8), part, kind, cp))
            time.sleep(0.2)
        # the end: everything back up, drivers leave (ending their supplies), drain
        for _, part, _, _ in pending:
            part.start()
        if broker_back_at:
            broker("start", port, ctrl, data, args.nodes)
            broker_down[-1] = (broker_down[-1][0], time.time())
        time.sleep(10)
        for part in drivers.values():
            part.stop()
        time.sleep(30)  # central's final timeout (20 s) and a margin: every supply ends
    finally:
        for part in parts:
            part.stop()
        messages = read_everything(kafka, prefix)
        broker("stop", port, ctrl, data)
    return report(run, messages, kills, restarts, parts, args.json, without, limit or None)


def wait_until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("the first central did not become active")
        time.sleep(0.2)


def recovery_times(run: Path, restarts: list[tuple[float, str, str]]
                   ) -> dict[str, list[tuple[float, float, str]]]:
    """Per kind: (seconds, when, cp) from a part's restart to its CP serving again."""
    serving: dict[str, list[float]] = defaultdict(list)
    day = time.strftime("%Y-%m-%d")
    lines = [ln for path in sorted(run.glob("central*.out"))
             for ln in path.read_text(errors="replace").splitlines()]
    for line in lines:
        match = STATE.match(line)
        if match and match.group(3) in ("Activado", "Suministrando", "Parado"):
            when = time.mktime(time.strptime(f"{day} {match.group(1)}", "%Y-%m-%d %H:%M:%S"))
            serving[match.group(2)].append(when)
    took: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for restarted, kind, cp in restarts:
        if kind not in ("engine", "monitor"):
            continue
        later = [t for t in serving.get(cp, []) if t >= int(restarted)]
        seconds = (min(later) - restarted) if later else float("inf")
        took[kind].append((max(0.0, seconds), restarted, cp))
    return took


def report(run: Path, messages: list[m.Message], kills: Counter[str],
           restarts: list[tuple[float, str, str]], parts: list[Part], as_json: bool,
           without: list[float], limit: float | None = None) -> int:
    requests = {x.msg_id for x in messages if isinstance(x, m.ChargeRequest)}
    auths = [x for x in messages if isinstance(x, m.Authorization)]
    answered = {a.request_id for a in auths}
    sessions = {a.session_id: a for a in auths if a.authorized}
    tickets: dict[str, set[str]] = defaultdict(set)
    billed: dict[str, float] = {}
    for x in messages:
        if isinstance(x, m.Ticket):
            tickets[x.session_id].add(x.msg_id)
            billed[x.session_id] = x.consumo_kwh
    supplied: dict[str, float] = defaultdict(float)
    for x in messages:
        if isinstance(x, m.Telemetry) and x.session_id:
            supplied[x.session_id] = max(supplied[x.session_id], x.consumo_kwh)
    # the site's promise: at every reading, what the engines last said they supply (each
    # open supply's latest kw, in the order they were sent) is within the limit
    last: dict[str, float] = {}
    peak, over = 0.0, 0
    timeline = sorted((x for x in messages if isinstance(x, (m.Telemetry, m.Ticket))),
                      key=lambda x: x.ts)
    for x in timeline:
        if isinstance(x, m.Ticket) or x.final:
            last.pop(x.session_id, None)
        elif x.kw is not None and x.session_id:
            last[x.session_id] = x.kw
            load = sum(last.values())
            peak = max(peak, load)
            over += int(limit is not None and load > limit + 0.01)
    lost = [s for s in sessions if not tickets.get(s)]
    duplicated = [s for s, ids in tickets.items() if len(ids) > 1]
    under = {s: round(supplied[s] - billed[s], 4) for s in billed
             if supplied.get(s, 0.0) > billed[s] + 1e-9}
    unasked = [u for part in parts for u in part.unasked]
    took = recovery_times(run, restarts)
    slowest = {kind: max(t for t, _, _ in items) for kind, items in took.items()}
    others = [(when, kind) for when, kind, _ in restarts if kind in ("central", "broker")]

    def alone(seconds: float, when: float) -> bool:
        """Central and the broker were up all along (none restarted 15 s before or during)."""
        return not any(-15 < w - when < seconds for w, _ in others)

    slowest_alone = {kind: max([t for t, w, _ in items if alone(t, w)], default=0.0)
                     for kind, items in took.items()}
    figures: dict[str, Any] = {
        "kills": dict(kills),
        "requests": len(requests), "answered": len(requests & answered),
        "authorized": len(sessions), "tickets": sum(1 for s in sessions if tickets.get(s)),
        "lost_tickets": len(lost), "duplicated_tickets": len(duplicated),
        "kwh_supplied": round(sum(supplied[s] for s in sessions), 2),
        "kwh_billed": round(sum(billed.get(s, 0.0) for s in sessions), 2),
        "kwh_under_billed": round(sum(under.values()), 4),
        "unasked_exits": len(unasked),
        "slowest_recovery_s": {k: round(v, 1) for k, v in slowest.items()},
        "slowest_recovery_central_up_s": {k: round(v, 1) for k, v in slowest_alone.items()},
        "failovers": len(without),
        "longest_without_active_central_s": round(max(without, default=0.0), 1),
        "site_limit_kw": limit, "site_peak_kw": round(peak, 2),
        "site_readings_over_limit": over,
    }
    print(f"kills: {', '.join(f'{k} {v}' for k, v in sorted(kills.items()))}")
    print(f"requests {figures['requests']}, answered {figures['answered']}; authorized "
          f"{figures['authorized']}, with a ticket {figures['tickets']}")
    print(f"lost tickets {len(lost)}, duplicated tickets {len(duplicated)}")
    print(f"kWh supplied {figures['kwh_supplied']}, billed {figures['kwh_billed']}, "
          f"under-billed {figures['kwh_under_billed']} over {len(under)} supplies")
    if without:
        print(f"failovers {len(without)}: longest time without an active central "
              f"{max(without):.1f} s (median {sorted(without)[len(without) // 2]:.1f} s)")
    if limit is not None:
        print(f"site limit {limit:g} kW: peak of what the engines reported {peak:.1f} kW, "
              f"readings over the limit {over}")
    print(f"processes that exited unasked: {len(unasked)}"
          + "".join(f"\n  {u}" for u in unasked[:20]))
    print("slowest recovery after a restart (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in sorted(slowest.items()))
          + "; with central and the broker up all along: "
          + ", ".join(f"{k} {v:.1f}" for k, v in sorted(slowest_alone.items())))
    for kind, items in sorted(took.items()):
        for seconds, when, cp in sorted(items, reverse=True)[:3]:
            near = [f"{k} restarted {w - when:+.0f} s" for w, k in others
                    if -30 < w - when < seconds]
            print(f"  {kind} of {cp} restarted {time.strftime('%H:%M:%S', time.localtime(when))}"
                  f": serving after {seconds:.1f} s" + (f" ({', '.join(near)})" if near else ""))
    if lost:
        print("sessions without a ticket: " + ", ".join(lost[:10]))
    if under:
        print("under-billed sessions: "
              + ", ".join(f"{s} {d}" for s, d in list(under.items())[:10]))
    if as_json:
        print(json.dumps(figures))
    ok = not lost and not duplicated and not under and not unasked and not over
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

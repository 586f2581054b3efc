"""`evc demo`: a broker (if none answers), central with its board, charge points, drivers.

Every child is a real `evc` process with its log in the run folder. Central
runs in the foreground (its board is the demo's screen); Ctrl+C or the
console's `quit` ends central, and then the demo ends every other child (and
the broker it started) within a few seconds, leaving nothing behind.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from evc.broker import manager
from evc.bus import ping
from evc.errors import EvcError
from evc.net import Address, free_port, parse_address, port_free
from evc.protocol import auth

EVC = [sys.executable, "-m", "evc.cli"]
LOCATIONS = ["C/Italia 5", "Av. Maisonnave 12", "C/Pintor Sorolla 3", "Pl. de los Luceros 1",
             "C/San Vicente 44", "Av. de Aguilera 20", "C/Alfonso el Sabio 8",
             "Av. Óscar Esplá 2", "C/Gerona 15", "Explanada de España 1"]


class Interrupted(Exception):
    """Ctrl+C or SIGTERM before central runs."""


class Children:
    """The demo's background processes, each in its own session, logs in the run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.fds: list[int] = []

    def start(self, name: str, args: list[str],
              stdin: int | None = None) -> subprocess.Popen[bytes]:
        log = open(self.run_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        # every child finds the credentials central makes in the run folder
        env = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1",
                   EVC_CREDENTIALS_DIR=str(self.run_dir / "credentials"))
        proc = subprocess.Popen(EVC + args,
                                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def wait_logs(self, names: list[str], text: str, timeout: float) -> None:
        """Until each named child's log shows ``text`` (or ``timeout``, or one dies)."""
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                log = (self.run_dir / f"{name}.log").read_text(encoding="utf-8", errors="replace")
                if text in log:
                    pending.discard(name)
                elif any(n == name and p.poll() is not None for n, p in self.procs):
                    raise EvcError(f"{name} exited at start; see {self.run_dir / name}.log:\n"
                                   + "\n".join(log.strip().splitlines()[-3:]))
            time.sleep(0.1)

    def key_pipe(self, name: str) -> int:
        """A FIFO in the run folder; `echo f > NAME.keys` presses a key on that engine."""
        path = self.run_dir / f"{name}.keys"
        if not path.exists():
            os.mkfifo(path)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # never EOF, never blocks
        os.set_blocking(fd, True)
        self.fds.append(fd)
        return fd

    def stop_all(self, grace: float = 3.0) -> list[str]:
        for _, proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for _, proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        killed = []
        for name, proc in self.procs:
            if proc.poll() is None:
                killed.append(name)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(2)
        for fd in self.fds:
            os.close(fd)
        return killed


def all_registered(db: Path, cps: list[str]) -> bool:
    """Central's DB (written atomically) shows every CP connected."""
    try:
        data = json.loads(db.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    states = {r.get("cp_id"): r.get("state") for r in data.get("cps", {}).values()}
    return all(states.get(cp) not in (None, "Desconectado") for cp in cps)


SITE = "Garage"


def ocpp_ids(n: int) -> list[str]:
    """The demo's OCPP chargers (behind its `evc ocpp` gateway)."""
    return [f"OC-{i:02d}" for i in range(1, n + 1)]


def start_ocpp(children: Children, kafka: Address, central_port: int, run_dir: Path,
               n_ocpp: int) -> str:
    """The gateway and its simulated chargers, once central has made their credentials
    (each one's HTTP Basic password is derived from it); their keys: OC-01.keys."""
    host = "127.0.0.1"
    port = free_port(host)
    children.start("ocpp-gateway", ["ocpp", str(kafka), f"{host}:{central_port}", "--listen",
                                    f"{host}:{port}", "--state-dir", str(run_dir / "state")])
    children.wait_logs(["ocpp-gateway"], "OCPP 1.6J gateway on", timeout=30)
    for cp in ocpp_ids(n_ocpp):
        secret = auth.check_key((run_dir / "credentials" / f"{cp}.key").read_text())
        children.start(f"charger-{cp}", [
            "ocpp-charger", f"ws://{host}:{port}/{cp}", "--password",
            auth.ocpp_password(secret, cp), "--state", str(run_dir / "state" / f"{cp}.json"),
            "--card", "D-01"], stdin=children.key_pipe(f"charger-{cp}"))
    return f"ws://{host}:{port}/<id>"


def write_inputs(run_dir: Path, n_cps: int, n_drivers: int, per_driver: int,
                 seed: int, n_ocpp: int = 0) -> tuple[list[str], list[Path]]:
    rng = random.Random(seed)
    cps = [f"CP-{i:02d}" for i in range(1, n_cps + 1)] + ocpp_ids(n_ocpp)
    with open(run_dir / "charging_points.csv", "w", encoding="utf-8") as out:
        out.write("id,location,price_eur_kwh,site\n")
        for i, cp in enumerate(cps):
            location = LOCATIONS[i % len(LOCATIONS)]
            out.write(f"{cp},\"{location}\",{0.30 + rng.randint(0, 15) / 100:.2f},{SITE}\n")
    # one car park whose grid connection is 60 % of what the demo's supplies (at most one
    # per driver) could draw together: the board shows central sharing it
    # (docs/ARCHITECTURE.md, "Site power limits")
    busy = min(n_cps, max(1, n_drivers))
    (run_dir / "sites.csv").write_text(f"id,max_kw\n{SITE},{round(22 * busy * 0.6):d}\n",
                                       encoding="utf-8")
    (run_dir / "drivers.txt").write_text(
        "".join(f"D-{d:02d}\n" for d in range(1, n_drivers + 1)), encoding="utf-8")
    files = []
    for d in range(1, n_drivers + 1):
        path = run_dir / f"requests-D-{d:02d}.txt"
        picks = [rng.choice(cps) for _ in range(per_driver)]
        path.write_text(f"# requests of driver D-{d:02d}, one CP id per line\n"
                        + "".join(f"{p}\n" for p in picks), encoding="utf-8")
        files.append(path)
    return cps, files


@click.command()
@click.option("--kafka", default="127.0.0.1:9092", show_default=True,
              help="Broker to use; if none answers there, one is started (and stopped after).")
@click.option("--cps", "n_cps", type=click.IntRange(1, 500), default=5, show_default=True,
              help="Charge points (a monitor + an engine each).")
@click.option("--drivers", "n_drivers", type=click.IntRange(0, 200), default=3,
              show_default=True)
@click.option("--requests", "per_driver", type=click.IntRange(1, 1000), default=6,
              show_default=True, help="Requests in each driver's file.")
@click.option("--charge-seconds", type=click.FloatRange(0, 3600), default=8.0,
              show_default=True)
@click.option("--central-port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for logs, DB and inputs [default: runs/<time>].")
@click.option("--display", type=click.Choice(["auto", "board", "plain"]), default="auto",
              show_default=True, help="Central's display (see evc central --help).")
@click.option("--seed", type=int, default=None, help="Seed of the random request files.")
@click.option("--once", is_flag=True,
              help="Drivers go through their files once (by default each starts its file "
                   "again after a pause, until `quit`: a demo left on a screen stays alive).")
@click.option("--ocpp", "n_ocpp", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Simulated OCPP 1.6J chargers (OC-01...) behind an `evc ocpp` gateway, "
                   "beside the evc CPs.")
@click.option("--web", "web", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
              help="Where the demo's web board (evc web) listens; 'none': no web board. A "
                   "port in use: the next free one.")
def demo(kafka: str, n_cps: int, n_drivers: int, per_driver: int, charge_seconds: float,
         central_port: int, run_dir: Path | None, display: str, seed: int | None,
         once: bool, web: str, n_ocpp: int) -> None:
    """Run the whole network here: broker, central (board), charge points and drivers.

    Ctrl+C (or `quit` at central's prompt) stops everything. While it runs, press an
    engine's keys from another terminal: echo f > <run-dir>/engine-CP-01.keys
    (f fault, h hang, r recover, u unplug), and watch the web board in a browser.
    """
    try:
        kafka_addr = parse_address(kafka, what="--kafka address")
        web_addr = None if web.lower() == "none" else parse_address(
            web, default_host="127.0.0.1", what="--web address")
        if not port_free(Address("0.0.0.0", central_port)):
            raise click.ClickException(
                f"port {central_port} is in use: give another with --central-port")
        run_dir = run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise click.ClickException(f"cannot create the run folder {run_dir}: "
                                       f"{exc.strerror or exc}") from None
        run_demo(kafka_addr, n_cps, n_drivers, per_driver, charge_seconds, central_port,
                 run_dir, display, seed if seed is not None else int(time.time()),
                 loop=not once, web=web_addr, n_ocpp=n_ocpp)
    except EvcError as exc:
        raise click.ClickException(str(exc)) from None


LOOP_PAUSE = 10.0  # seconds a looping driver rests before its file again


def run_demo(kafka: Address, n_cps: int, n_drivers: int, per_driver: int,
             charge_seconds: float, central_port: int, run_dir: Path, display: str,
             seed: int, loop: bool = True, web: Address | None = None,
             n_ocpp: int = 0) -> None:
    say = click.echo
    broker_cfg = None
    if not ping(str(kafka), timeout=3.0):
        broker_cfg = manager.make_config(kafka, None, run_dir.resolve() / "broker", None)
        say(f"no broker answers at {kafka}: starting one (evc broker) ...")
        manager.start(broker_cfg, fresh=False, timeout=90, echo=say)
    children = Children(run_dir)
    central: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: object) -> None:
        if central is None:  # still starting the children: stop waiting for them now
            raise Interrupted
        if central.poll() is None:
            central.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a closed terminal too
        signal.signal(signum, on_signal)
    try:
        cps, files = write_inputs(run_dir, n_cps, n_drivers, per_driver, seed, n_ocpp)
        evc_cps = [cp for cp in cps if cp not in ocpp_ids(n_ocpp)]
        host = "127.0.0.1"
        ports = {cp: free_port(host) for cp in evc_cps}
        for cp in evc_cps:
            children.start(f"engine-{cp}", ["cp-engine", str(kafka), "--listen",
                                            f"{host}:{ports[cp]}", "--id", cp,
                                            "--state-dir", str(run_dir / "state")],
                           stdin=children.key_pipe(f"engine-{cp}"))
        children.wait_logs([f"engine-{cp}" for cp in evc_cps], "engine listening", timeout=30)
        for cp in evc_cps:
            children.start(f"monitor-{cp}", ["cp-monitor", f"{host}:{ports[cp]}",
                                             f"{host}:{central_port}", cp,
                                             "--location", LOCATIONS[cps.index(cp) % 10]])
        say(f"demo: {n_cps} charge points" + (f", {n_ocpp} OCPP chargers" if n_ocpp else "")
            + f", {n_drivers} drivers; logs in {run_dir}/")
        web_url = ""
        if web is not None:
            port = web.port if port_free(web) else free_port(web.host)
            web_url = f"http://{web.host}:{port}/"
            children.start("web", ["web", str(kafka), "--listen", f"{web.host}:{port}"])
            say(f"demo: web board at {web_url}")
        db = run_dir / "central.json"
        central = subprocess.Popen(EVC + [
            "central", str(central_port), str(kafka), str(db),
            "--cps", str(run_dir / "charging_points.csv"), "--sites",
            str(run_dir / "sites.csv"), "--drivers",
            str(run_dir / "drivers.txt"), "--credentials-dir", str(run_dir / "credentials"),
            "--display", display, "--log-file", str(run_dir / "central.log")]
            + (["--web-url", web_url] if web_url else []))
        drivers_at = time.monotonic() + 20  # drivers start once the CPs are up (or by then)
        drivers_started = n_drivers == 0
        drivers: dict[str, tuple[subprocess.Popen[bytes], list[str]]] = {}
        rested: dict[str, float] = {}
        ocpp_started = n_ocpp == 0
        while central.poll() is None:
            if not ocpp_started and all((run_dir / "credentials" / f"{cp}.key").exists()
                                        for cp in ocpp_ids(n_ocpp)):
                url = start_ocpp(children, kafka, central_port, run_dir, n_ocpp)
                say(f"demo: OCPP gateway at {url}")
                ocpp_started = True
            if not drivers_started and (all_registered(db, cps) or time.monotonic() > drivers_at):
                for i, path in enumerate(files, start=1):
                    args = ["driver", str(kafka), f"D-{i:02d}", "--file", str(path),
                            "--charge-seconds", str(charge_seconds), "--timeout", "30",
                            "--state-dir", str(run_dir / "state")]
                    drivers[f"driver-D-{i:02d}"] = (children.start(f"driver-D-{i:02d}", args),
                                                    args)
                drivers_started = True
            if loop:  # a driver done with its file starts it again after a rest
                now = time.monotonic()
                for name, (proc, args) in list(drivers.items()):
                    if proc.poll() == 0:
                        if now >= rested.setdefault(name, now + LOOP_PAUSE):
                            drivers[name] = (children.start(name, args), args)
                            del rested[name]
            try:
                central.wait(0.5)
            except subprocess.TimeoutExpired:
                continue
    except Interrupted:
        say("demo: interrupted while starting")
    finally:
        if central is not None and central.poll() is None:
            central.send_signal(signal.SIGTERM)
            try:
                central.wait(3)
            except subprocess.TimeoutExpired:
                central.kill()
                central.wait(2)
        killed = children.stop_all()
        if killed:
            say(f"demo: had to kill {', '.join(killed)}")
        if broker_cfg is not None:
            manager.stop(broker_cfg.data_dir, grace=20)
            say("demo: broker stopped")
        say(f"demo: stopped; logs in {run_dir}/")

"""Fetch, format, start, watch and stop a single-node Kafka broker (KRaft).

The broker is Apache Kafka itself: Maven fetches ``org.apache.kafka:kafka_2.13``
and its runtime dependencies (see pom.xml beside this file) into a cache once,
then ``java -cp 'libs/*' kafka.Kafka server.properties`` runs a combined
broker + controller, as Kafka's own scripts do.

Layout of a data dir (default ``~/.cache/evc/broker``)::

    server.properties   written from the options at every start
    kraft/              the broker's log dirs (formatted once)
    logs/server.log     the broker's log
    broker.out          its stdout/stderr
    broker.pid          pid + address of the running broker
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from evc.broker.install import (
    BrokerError,
    Echo,
    cache_home,
    check_java,
    ensure_libs,
    resource,
)
from evc.bus import ROLES, Sasl, ping, provision
from evc.errors import ConfigError
from evc.net import Address, port_free

KAFKA_MAIN = "kafka.Kafka"


@dataclass(frozen=True)
class BrokerConfig:
    listen: Address
    advertise: Address
    controller: Address
    data_dir: Path
    secure: bool = False  # SASL/SCRAM users and ACLs (see docs/SECURITY.md)
    topic_prefix: str = ""  # the network whose topics the ACLs name
    node_id: int = 1
    voters: str = ""  # controller.quorum.voters; "" = this node alone
    replication: int = 1  # of Kafka's internal topics (3 on a cluster of three or more)
    cluster_id: str = ""  # "" = a new one at the first format

    @property
    def quorum(self) -> str:
        return self.voters or f"{self.node_id}@{self.controller}"

    @property
    def min_isr(self) -> int:
        return 2 if self.replication >= 3 else 1

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def kraft_dir(self) -> Path:
        return self.data_dir / "kraft"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "server.log"

    @property
    def out_file(self) -> Path:
        return self.data_dir / "broker.out"

    @property
    def users_file(self) -> Path:
        """The secure broker's Kafka users and passwords (mode 0600)."""
        return self.data_dir / "kafka-users.json"

    def render(self, admin_password: str = "") -> str:
        text = resource("server.properties.in").format(
            listen_host=self.listen.host,
            listen_port=self.listen.port,
            controller_host=self.controller.host,
            controller_port=self.controller.port,
            advertise=self.advertise,
            log_dirs=self.kraft_dir,
            node_id=self.node_id,
            voters=self.quorum,
            replication=self.replication,
            min_isr=self.min_isr,
        )
        if not self.secure:
            return text
        # Clients speak SASL/SCRAM-SHA-256; the controller listener stays local plaintext.
        text = text.replace(f"PLAINTEXT://{self.listen.host}:{self.listen.port}",
                            f"SASL_PLAINTEXT://{self.listen.host}:{self.listen.port}")
        text = text.replace(f"advertised.listeners=PLAINTEXT://{self.advertise}",
                            f"advertised.listeners=SASL_PLAINTEXT://{self.advertise}")
        text = text.replace("inter.broker.listener.name=PLAINTEXT",
                            "inter.broker.listener.name=SASL_PLAINTEXT")
        text = text.replace("listener.security.protocol.map=CONTROLLER:PLAINTEXT,"
                            "PLAINTEXT:PLAINTEXT",
                            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,"
                            "SASL_PLAINTEXT:SASL_PLAINTEXT")
        text = text.replace("auto.create.topics.enable=true", "auto.create.topics.enable=false")
        return text + (
            "sasl.enabled.mechanisms=SCRAM-SHA-256\n"
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256\n"
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="admin" password="{admin_password}";\n'
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n"
            "allow.everyone.if.no.acl.found=false\n"
            # the broker's own controller connections (local plaintext) and the admin
            "super.users=User:admin;User:ANONYMOUS\n"
        )


def default_data_dir() -> Path:
    return cache_home() / "broker"


def make_config(
    listen: Address, advertise: Address | None, data_dir: Path | None, controller_port: int | None,
    *, secure: bool = False, topic_prefix: str = "", node_id: int = 1, voters: str = "",
    cluster_id: str = ""
) -> BrokerConfig:
    if advertise is None:
        if listen.host in ("0.0.0.0", "::", ""):
            raise ConfigError(
                f"--listen {listen} accepts any address: say with --advertise HOST:PORT "
                "which address clients on other machines use"
            )
        advertise = listen
    if voters and secure:
        raise ConfigError("--secure is for a single broker; a cluster runs without it")
    # a node of a cluster on several machines: its controller listens where the others
    # reach it (the voters list names that address)
    controller_host = (listen.host if voters
                       else "127.0.0.1" if secure or listen.host in ("0.0.0.0", "::")
                       else listen.host)
    ctrl_port = controller_port or listen.port + 1
    if ctrl_port > 65535:
        raise ConfigError("controller port out of range: give --controller-port")
    return BrokerConfig(
        listen=listen,
        advertise=advertise,
        controller=Address(controller_host, ctrl_port),
        data_dir=(data_dir or default_data_dir()).resolve(),
        secure=secure,
        topic_prefix=topic_prefix,
        node_id=node_id,
        voters=voters,
        replication=_replication(voters),
        cluster_id=cluster_id,
    )


def _replication(voters: str) -> int:
    """Replicas of Kafka's internal topics: 3 on a cluster of three or more."""
    nodes = len([v for v in voters.split(",") if v.strip()]) if voters else 1
    return 3 if nodes >= 3 else 1


def cluster_configs(listen: Address, nodes: int, data_dir: Path | None) -> list[BrokerConfig]:
    """``nodes`` brokers on this machine: node i listens on port + 2(i-1) and its
    controller on the next port; each has its data in ``<data-dir>/node-<i>``; one
    cluster id for all (kept in ``<data-dir>/cluster.id``)."""
    if listen.host in ("0.0.0.0", "::", ""):
        raise ConfigError("--nodes runs every node on this machine: --listen 127.0.0.1:PORT "
                          "(one node per machine: --node-id and --voters)")
    if listen.port + 2 * nodes > 65536:
        raise ConfigError(f"ports {listen.port}-{listen.port + 2 * nodes - 1} out of range")
    root = (data_dir or default_data_dir()).resolve()
    voters = ",".join(f"{i}@{listen.host}:{listen.port + 2 * (i - 1) + 1}"
                      for i in range(1, nodes + 1))
    return [make_config(Address(listen.host, listen.port + 2 * (i - 1)), None,
                        root / f"node-{i}", listen.port + 2 * (i - 1) + 1, node_id=i,
                        voters=voters)
            for i in range(1, nodes + 1)]


def cluster_nodes(data_dir: Path) -> list[Path]:
    """The node folders of a cluster started with --nodes (none for a single broker)."""
    return sorted((p for p in data_dir.glob("node-*") if p.is_dir()),
                  key=lambda p: int(p.name.split("-", 1)[1]) if p.name[5:].isdigit() else 0)


def cluster_id(root: Path, *, fresh: bool) -> str:
    """The cluster id every node of a local cluster is formatted with."""
    path = root / "cluster.id"
    if not fresh:
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            pass
    root.mkdir(parents=True, exist_ok=True)
    cid = new_cluster_id()
    path.write_text(cid, encoding="utf-8")
    return cid


# ---------------------------------------------------------------------- process


@dataclass(frozen=True)
class Running:
    pid: int
    bootstrap: str
    data_dir: Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie or a recycled pid is not our broker
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return KAFKA_MAIN.encode() in cmdline


def running(data_dir: Path) -> Running | None:
    pid_file = data_dir / "broker.pid"
    try:
        info = json.loads(pid_file.read_text(encoding="utf-8"))
        pid, bootstrap = int(info["pid"]), str(info["bootstrap"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _pid_alive(pid):
        return None
    return Running(pid, bootstrap, data_dir)


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    picked = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join(picked) or "(empty log)"


def _java_cmd(java: str, libs: Path, cfg: BrokerConfig, main: str, *args: str) -> list[str]:
    log_conf = resources.files("evc.broker").joinpath("log4j2.properties")
    return [
        java, "-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={cfg.log_file.parent}",
        f"-Dlog4j2.configurationFile={log_conf}",
        "-cp", f"{libs}/*", main, *args,
    ]


def new_cluster_id() -> str:
    """A random KRaft cluster id (22 URL-safe base64 characters), as Kafka makes them.

    Like Kafka's own ``Uuid.randomUuid``, never one that starts with ``-``: the
    StorageTool would read it as an option (``-t -abc…``), 1 time in 64.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def users(cfg: BrokerConfig) -> dict[str, str]:
    """The secure broker's users and passwords (made once, kept in the data dir)."""
    try:
        data = json.loads(cfg.users_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as exc:
        raise BrokerError(f"cannot read {cfg.users_file}: {exc}") from exc
    missing = [user for user in ("admin", *ROLES) if user not in data]
    if missing:  # a new broker, or one made before a role existed
        data |= {user: secrets.token_hex(16) for user in missing}
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(cfg.users_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1)
    return {str(k): str(v) for k, v in data.items()}


def _format_storage(java: str, libs: Path, cfg: BrokerConfig) -> None:
    if (cfg.kraft_dir / "meta.properties").exists():
        return
    cid = cfg.cluster_id or new_cluster_id()
    extra = []
    if cfg.secure:  # the admin user exists from the first start on
        extra = ["--add-scram",
                 f"SCRAM-SHA-256=[name=admin,password={users(cfg)['admin']}]"]
    cmd = _java_cmd(java, libs, cfg, "kafka.tools.StorageTool",
                    "format", "-t", cid, "-c", str(cfg.properties), *extra)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-10:])
        raise BrokerError(f"formatting Kafka storage in {cfg.kraft_dir} failed:\n{tail}")


def prepare(cfg: BrokerConfig, *, fresh: bool, echo: Echo = print) -> list[str]:
    """Everything before launch; returns the java command line of the broker."""
    java = check_java()
    libs = ensure_libs(echo)
    if fresh:
        shutil.rmtree(cfg.kraft_dir, ignore_errors=True)
        shutil.rmtree(cfg.log_file.parent, ignore_errors=True)
    for addr, what in ((cfg.listen, "listen"), (cfg.controller, "controller")):
        if not port_free(addr):
            raise BrokerError(f"port {addr} ({what}) is already in use by another program")
    cfg.log_file.parent.mkdir(parents=True, exist_ok=True)
    cfg.properties.write_text(cfg.render(users(cfg)["admin"] if cfg.secure else ""),
                              encoding="utf-8")
    os.chmod(cfg.properties, 0o600)  # it holds the admin password when secure
    _format_storage(java, libs, cfg)
    return _java_cmd(java, libs, cfg, KAFKA_MAIN, str(cfg.properties))


def _write_pid(cfg: BrokerConfig, pid: int) -> None:
    cfg.pid_file.write_text(
        json.dumps({"pid": pid, "bootstrap": str(cfg.advertise), "listen": str(cfg.listen)}),
        encoding="utf-8",
    )


def wait_ready(cfg: BrokerConfig, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until a client call succeeds; BrokerError if the broker dies or time runs out."""
    deadline = time.monotonic() + timeout
    probe = str(cfg.listen if cfg.listen.host not in ("0.0.0.0", "::") else cfg.advertise)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(
                f"the broker died during start (exit {proc.returncode}); last log lines:\n"
                f"{_tail(cfg.log_file)}\n{_tail(cfg.out_file, 5)}"
            )
        admin = Sasl("admin", users(cfg)["admin"]) if cfg.secure else None
        if ping(probe, timeout=2.0, sasl=admin):
            if admin is not None:
                provision(probe, admin, {r: users(cfg)[r] for r in ROLES}, cfg.topic_prefix)
            return
        time.sleep(0.3)
    _terminate(proc.pid, 10)
    raise BrokerError(
        f"the broker did not become ready within {timeout:g} s; last log lines:\n"
        f"{_tail(cfg.log_file)}"
    )


def _launch(cfg: BrokerConfig, *, fresh: bool, echo: Echo) -> subprocess.Popen[bytes]:
    cmd = prepare(cfg, fresh=fresh, echo=echo)
    with open(cfg.out_file, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=cfg.data_dir,
        )
    _write_pid(cfg, proc.pid)
    return proc


def start(cfg: BrokerConfig, *, fresh: bool, timeout: float, echo: Echo = print) -> Running:
    current = running(cfg.data_dir)
    if current is not None:
        return current
    proc = _launch(cfg, fresh=fresh, echo=echo)
    try:
        wait_ready(cfg, proc, timeout)
    except BaseException:
        if proc.poll() is None:
            _terminate(proc.pid, 10)
        cfg.pid_file.unlink(missing_ok=True)
        raise
    return Running(proc.pid, str(cfg.advertise), cfg.data_dir)


def start_cluster(configs: list[BrokerConfig], *, fresh: bool, timeout: float,
                  echo: Echo = print) -> list[Running]:
    """Start every node that is not running (all at once: a KRaft quorum needs a
    majority of its voters up), then wait until each answers."""
    root = configs[0].data_dir.parent
    if fresh:
        for cfg in configs:
            stop(cfg.data_dir, grace=10)
    cid = cluster_id(root, fresh=fresh)
    configs = [replace(cfg, cluster_id=cid) for cfg in configs]
    started: list[tuple[BrokerConfig, subprocess.Popen[bytes]]] = []
    try:
        for cfg in configs:
            if running(cfg.data_dir) is None:
                started.append((cfg, _launch(cfg, fresh=fresh, echo=echo)))
        for cfg, proc in started:
            wait_ready(cfg, proc, timeout)
    except BaseException:
        for cfg, proc in started:
            if proc.poll() is None:
                _terminate(proc.pid, 10)
            cfg.pid_file.unlink(missing_ok=True)
        raise
    out = []
    for cfg in configs:
        current = running(cfg.data_dir)
        if current is None:
            raise BrokerError(f"node {cfg.node_id} of the cluster is not running; log:\n"
                              f"{_tail(cfg.log_file)}")
        out.append(current)
    return out


def run_foreground(cfg: BrokerConfig, *, fresh: bool, timeout: float,
                   echo: Echo = print) -> int:
    """Run the broker attached to this terminal until Ctrl+C / SIGTERM."""
    current = running(cfg.data_dir)
    if current is not None:
        raise BrokerError(f"a broker already runs at {current.bootstrap} (pid {current.pid})")
    cmd = prepare(cfg, fresh=fresh, echo=echo)
    with open(cfg.out_file, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=cfg.data_dir)
    _write_pid(cfg, proc.pid)
    stopping = {"flag": False}

    def _forward(signum: int, _frame: object) -> None:
        stopping["flag"] = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a closed terminal too
        signal.signal(signum, _forward)
    try:
        wait_ready(cfg, proc, timeout)
        echo(f"Kafka broker ready at {cfg.advertise} (pid {proc.pid}); log {cfg.log_file}")
        echo("Ctrl+C stops it.")
        while proc.poll() is None:
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
        if not stopping["flag"]:
            raise BrokerError(f"the broker exited (code {proc.returncode}):\n{_tail(cfg.log_file)}")
        return 0
    finally:
        if proc.poll() is None:
            _terminate(proc.pid, 30)
        cfg.pid_file.unlink(missing_ok=True)


def _terminate(pid: int, grace: float) -> bool:
    """SIGTERM, wait up to ``grace`` s, then SIGKILL. True if it ended by SIGTERM."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    return _await_end(pid, grace)


def _await_end(pid: int, grace: float) -> bool:
    """Wait up to ``grace`` s for a process told to end, then SIGKILL. True if it ended
    by itself."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return True
        except ChildProcessError:
            if not _pid_alive(pid):
                return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    return False


def stop_all(data_dirs: list[Path], grace: float = 30.0) -> list[Running | None]:
    """Stop several brokers together (SIGTERM to all, then wait for all, one deadline):
    what each was, or None for one that was not running."""
    found = [running(folder) for folder in data_dirs]
    told = []
    for current in found:
        if current is not None:
            try:
                os.kill(current.pid, signal.SIGTERM)
                told.append(current.pid)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for pid in told:
        _await_end(pid, max(0.0, deadline - time.monotonic()))
    for folder in data_dirs:
        (folder / "broker.pid").unlink(missing_ok=True)
    return found


def stop(data_dir: Path, grace: float = 30.0) -> Running | None:
    """Stop one broker: what it was, or None if it was not running."""
    return stop_all([data_dir], grace)[0]


__all__ = [
    "BrokerConfig", "BrokerError", "Running", "make_config", "start", "stop", "stop_all",
    "running",
    "run_foreground", "default_data_dir", "cluster_configs", "cluster_nodes", "start_cluster",
]

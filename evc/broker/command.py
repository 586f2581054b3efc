"""`evc broker start | stop | status`."""

from __future__ import annotations

from pathlib import Path

import click

from evc.broker import manager
from evc.net import Address
from evc.options import ADDRESS

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Broker data, logs and pid file [default: ~/.cache/evc/broker].",
)


@click.group()
def broker() -> None:
    """Run a real single-node Apache Kafka 4 broker (KRaft) without Docker.

    The first start fetches Kafka with Maven (Java 17+ and Maven needed); with
    Docker, `docker compose up -d` gives the same broker instead.
    """


@broker.command()
@click.option("--listen", default="127.0.0.1:9092", show_default=True, type=ADDRESS,
              help="HOST:PORT the broker listens on (0.0.0.0:9092 for other machines).")
@click.option("--advertise", default=None, type=ADDRESS,
              help="HOST:PORT clients are told to use; needed with --listen 0.0.0.0:PORT.")
@click.option("--controller-port", type=click.IntRange(1, 65535), default=None,
              help="KRaft controller port [default: listen port + 1].")
@data_dir_option
@click.option("--fresh", is_flag=True, help="Wipe the broker's data before starting.")
@click.option("--timeout", type=click.FloatRange(1, 600), default=60.0, show_default=True,
              help="Seconds to wait until the broker answers.")
@click.option("--foreground", is_flag=True, help="Stay attached; Ctrl+C stops the broker.")
@click.option("--secure", is_flag=True,
              help="Clients must log in (SASL/SCRAM-SHA-256) as one of the users it makes "
                   "(central, engine, driver, viewer, web), each allowed only its own topics "
                   "(ACLs). See `evc broker users` and docs/SECURITY.md.")
@click.option("--topic-prefix", default="", help="With --secure: the topic prefix of the "
              "network whose topics the ACLs name.")
@click.option("--nodes", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Brokers on this machine, as one cluster: node i listens on the --listen "
                   "port + 2(i-1), its controller on the next port, its data in "
                   "<data-dir>/node-<i>. With 3 or more, topics get 3 replicas.")
@click.option("--node-id", type=click.IntRange(1, 999), default=1, show_default=True,
              help="One node of a cluster spread over machines: this node's id in --voters.")
@click.option("--voters", default="",
              help="One node per machine: every controller, ID@HOST:PORT,... (the same on "
                   "each machine), e.g. 1@IP1:9093,2@IP2:9093,3@IP3:9093.")
@click.option("--cluster-id", default="",
              help="With --voters: the same id on every machine (`evc broker cluster-id` "
                   "makes one).")
def start(listen: Address, advertise: Address | None, controller_port: int | None,
          data_dir: Path | None, fresh: bool, timeout: float, foreground: bool,
          secure: bool, topic_prefix: str, nodes: int, node_id: int, voters: str,
          cluster_id: str) -> None:
    """Start the broker (detached) and wait until it answers."""
    if nodes > 1:
        if foreground or secure or voters:
            raise click.UsageError("--nodes does not go with --foreground, --secure or "
                                   "--voters")
        configs = manager.cluster_configs(listen, nodes, data_dir)
        runs = manager.start_cluster(configs, fresh=fresh, timeout=timeout, echo=click.echo)
        bootstrap = ",".join(r.bootstrap for r in runs)
        click.echo(f"Kafka cluster of {nodes} brokers running at {bootstrap} (pids "
                   f"{', '.join(str(r.pid) for r in runs)}); logs in "
                   f"{configs[0].data_dir.parent}/node-*/logs")
        return
    if voters and not cluster_id:
        raise click.UsageError("--voters needs --cluster-id (the same on every node)")
    cfg = manager.make_config(listen, advertise, data_dir, controller_port, secure=secure,
                              topic_prefix=topic_prefix, node_id=node_id, voters=voters,
                              cluster_id=cluster_id)
    if foreground:
        raise SystemExit(manager.run_foreground(cfg, fresh=fresh, timeout=timeout,
                                                echo=click.echo))
    current = manager.running(cfg.data_dir)
    if current is not None:
        click.echo(f"Kafka broker already running at {current.bootstrap} "
                   f"(pid {current.pid}, data {current.data_dir})")
        return
    run = manager.start(cfg, fresh=fresh, timeout=timeout, echo=click.echo)
    if secure:
        click.echo(f"clients log in as these users (`evc broker users --data-dir "
                   f"{cfg.data_dir}` prints them again):")
        print_users(cfg)
    click.echo(f"Kafka broker running at {run.bootstrap} (pid {run.pid}); log {cfg.log_file}")


@broker.command()
@data_dir_option
@click.option("--timeout", type=click.FloatRange(1, 300), default=30.0, show_default=True,
              help="Seconds to wait for a clean shutdown before killing it.")
@click.option("--node", type=click.IntRange(1, 9), default=None,
              help="Of a cluster started with --nodes: stop only this node.")
def stop(data_dir: Path | None, timeout: float, node: int | None) -> None:
    """Stop the broker (or every node of the cluster) started with `evc broker start`."""
    root = (data_dir or manager.default_data_dir()).resolve()
    folders = manager.cluster_nodes(root) or [root]
    if node is not None:
        folders = [f for f in folders if f.name == f"node-{node}"]
        if not folders:
            raise click.ClickException(f"no node {node} in {root}")
    # Every node at once: stopped one after another, the last ones lose their quorum and
    # each waits out its controlled shutdown (the whole --timeout) before being killed.
    for folder, stopped in zip(folders, manager.stop_all(folders, grace=timeout), strict=True):
        if stopped is None:
            click.echo(f"Kafka broker {_which(folder)}is not running")
        else:
            click.echo(f"Kafka broker {_which(folder)}at {stopped.bootstrap} stopped "
                       f"(pid {stopped.pid})")


def _which(folder: Path) -> str:
    return f"{folder.name} " if folder.name.startswith("node-") else ""


@broker.command()
@data_dir_option
def status(data_dir: Path | None) -> None:
    """Say whether the broker (or each node of a cluster) runs, and where. Exit code 3
    when none does."""
    root = (data_dir or manager.default_data_dir()).resolve()
    up = 0
    for folder in manager.cluster_nodes(root) or [root]:
        current = manager.running(folder)
        if current is None:
            click.echo(f"Kafka broker {_which(folder)}is not running")
            continue
        up += 1
        click.echo(f"Kafka broker {_which(folder)}running at {current.bootstrap} "
                   f"(pid {current.pid}, data {current.data_dir})")
    if not up:
        raise SystemExit(3)


@broker.command("cluster-id")
def cluster_id_command() -> None:
    """Print a new cluster id (for --cluster-id on every node of a cluster)."""
    click.echo(manager.new_cluster_id())


def print_users(cfg: manager.BrokerConfig) -> None:
    found = manager.users(cfg)
    for role, who in (("central", "central"), ("engine", "every cp-engine"),
                      ("driver", "every driver"), ("viewer", "evc status"),
                      ("web", "evc web"), ("ocpp", "evc ocpp")):
        click.echo(f"  {who:16s} --kafka-user {role} --kafka-password {found[role]}")


@broker.command("users")
@data_dir_option
def users_command(data_dir: Path | None) -> None:
    """Print the Kafka users of a broker started with --secure (keep them private)."""
    folder = (data_dir or manager.default_data_dir()).resolve()
    cfg = manager.make_config(Address("127.0.0.1", 9092), None, folder, None,
                              secure=True)
    if not cfg.users_file.exists():
        raise click.ClickException(f"no users in {folder}: start it with --secure first")
    print_users(cfg)

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
                   "(central, engine, driver, viewer), each allowed only its own topics "
                   "(ACLs). See `evc broker users` and docs/SECURITY.md.")
@click.option("--topic-prefix", default="", help="With --secure: the topic prefix of the "
              "network whose topics the ACLs name.")
def start(listen: Address, advertise: Address | None, controller_port: int | None,
          data_dir: Path | None, fresh: bool, timeout: float, foreground: bool,
          secure: bool, topic_prefix: str) -> None:
    """Start the broker (detached) and wait until it answers."""
    cfg = manager.make_config(listen, advertise, data_dir, controller_port, secure=secure,
                              topic_prefix=topic_prefix)
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
def stop(data_dir: Path | None, timeout: float) -> None:
    """Stop the broker started with `evc broker start`."""
    stopped = manager.stop((data_dir or manager.default_data_dir()).resolve(), grace=timeout)
    if stopped is None:
        click.echo("Kafka broker is not running")
    else:
        click.echo(f"Kafka broker at {stopped.bootstrap} stopped (pid {stopped.pid})")


@broker.command()
@data_dir_option
def status(data_dir: Path | None) -> None:
    """Say whether the broker runs, and where. Exit code 3 when it does not."""
    current = manager.running((data_dir or manager.default_data_dir()).resolve())
    if current is None:
        click.echo("Kafka broker is not running")
        raise SystemExit(3)
    click.echo(f"Kafka broker running at {current.bootstrap} (pid {current.pid}, "
               f"data {current.data_dir})")


def print_users(cfg: manager.BrokerConfig) -> None:
    found = manager.users(cfg)
    for role, who in (("central", "central"), ("engine", "every cp-engine"),
                      ("driver", "every driver"), ("viewer", "evc status")):
        click.echo(f"  {who:16s} --kafka-user {role} --kafka-password {found[role]}")


@broker.command("users")
@data_dir_option
def users_command(data_dir: Path | None) -> None:
    """Print the Kafka users of a broker started with --secure (keep them private)."""
    folder = (data_dir or manager.default_data_dir()).resolve()
    cfg = manager.make_config(manager.Address("127.0.0.1", 9092), None, folder, None,
                              secure=True)
    if not cfg.users_file.exists():
        raise click.ClickException(f"no users in {folder}: start it with --secure first")
    print_users(cfg)

"""Click pieces every command shares: option groups and parameter types.

    @click.command()
    @click.argument("kafka", type=KAFKA)
    @common_options
    def cmd(kafka: Bootstrap, common: Common) -> None: ...

An ``EvcError`` raised by any command becomes one ``Error: …`` line (exit 1)
in ``evc.cli.PluginGroup``; commands do not wrap it themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from evc.bus import Sasl
from evc.errors import EvcError, ProtocolError
from evc.net import Address, Bootstrap, parse_address, parse_addresses, parse_bootstrap
from evc.protocol import pairing
from evc.protocol.ids import check_id


def _name(param: click.Parameter | None) -> str:
    """How an error names the parameter: ``--listen`` or ``kafka``."""
    if param is None:
        return "value"
    if isinstance(param, click.Option):
        return param.opts[0]
    name = (param.name or "value").replace("_", " ")
    return "Kafka" if name == "kafka" else name


class _Parsed(click.ParamType):  # type: ignore[type-arg]  # generic in click 8.2 only
    """A parameter read by one of the shared parsers (net, protocol.ids): their
    ``EvcError`` becomes Click's one-line error."""

    def parse(self, text: str, what: str) -> Any:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if not isinstance(value, str):  # already converted (a default given as a value)
            return value
        try:
            return self.parse(value, _name(param))
        except EvcError as exc:
            raise click.ClickException(str(exc)) from exc


class AddressType(_Parsed):
    """``HOST:PORT`` (or ``PORT`` with a default host) -> ``Address``."""

    name = "host:port"

    def __init__(self, default_host: str | None = None) -> None:
        self.default_host = default_host

    def parse(self, text: str, what: str) -> Address:
        return parse_address(text, default_host=self.default_host, what=f"{what} address")


class IdType(_Parsed):
    """A charge point or driver id, by protocol.ids' one rule."""

    name = "id"

    def parse(self, text: str, what: str) -> str:
        return check_id(text, what)


class AddressesType(_Parsed):
    """``HOST:PORT[,HOST:PORT...]`` -> a list of ``Address`` (at least one)."""

    name = "host:port[,host:port]"

    def parse(self, text: str, what: str) -> list[Address]:
        return parse_addresses(text, what=f"{what} address")


class BootstrapType(_Parsed):
    """Kafka: ``HOST:PORT`` or, for a cluster, ``HOST:PORT,HOST:PORT,...``."""

    name = "host:port[,host:port]"

    def parse(self, text: str, what: str) -> Bootstrap:
        return parse_bootstrap(text, what=f"{what} address")


ADDRESS = AddressType()
KAFKA = BootstrapType()
ADDRESSES = AddressesType()
ID = IdType()
LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)


@dataclass(frozen=True)
class Common:
    """The options every network component takes."""

    topic_prefix: str = ""
    log_level: str = "WARNING"
    log_file: str | None = None
    kafka_wait: float = 10.0
    kafka_user: str | None = None
    kafka_password: str | None = None

    @property
    def sasl(self) -> Sasl | None:
        """The Kafka login for a broker started with `evc broker start --secure`."""
        if self.kafka_user is None:
            return None
        return Sasl(self.kafka_user, self.kafka_password or "")


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --topic-prefix, --log-level, --log-file, --kafka-wait, --kafka-user and
    --kafka-password as ``common: Common``."""

    @click.option("--topic-prefix", default="", help="Prefix of the Kafka topic names "
                  "(several networks on one broker).")
    @click.option("--log-level", default="WARNING", show_default=True, type=LOG_LEVELS)
    @click.option("--log-file", type=click.Path(dir_okay=False), default=None,
                  help="Also write the log to this file.")
    @click.option("--kafka-wait", type=click.FloatRange(1, 86400), default=10.0,
                  show_default=True, help="Seconds to keep trying to reach the broker at "
                  "start (a restart during a broker outage waits for it).")
    @click.option("--kafka-user", envvar="EVC_KAFKA_USER", default=None,
                  help="Kafka user, for a broker started with --secure [env EVC_KAFKA_USER].")
    @click.option("--kafka-password", envvar="EVC_KAFKA_PASSWORD", default=None,
                  help="Its password [env EVC_KAFKA_PASSWORD].")
    @functools.wraps(func)
    def wrapper(*args: Any, topic_prefix: str, log_level: str, log_file: str | None,
                kafka_wait: float, kafka_user: str | None, kafka_password: str | None,
                **kwargs: Any) -> Any:
        common = Common(topic_prefix=topic_prefix, log_level=log_level, log_file=log_file,
                        kafka_wait=kafka_wait, kafka_user=kafka_user,
                        kafka_password=kafka_password)
        return func(*args, common=common, **kwargs)

    return wrapper


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def credentials_option(whose: str, ident: str) -> Decorator:
    """``--credentials FILE``: ``whose`` credential file, with the same defaults everywhere
    (``ident`` names the id the default file is named after)."""
    return click.option(
        "--credentials", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help=f"{whose} credential file [default: $EVC_SECRET, else "
             f"$EVC_CREDENTIALS_DIR/{ident}.key, else data/credentials/{ident}.key].")


def pair_option(how: str) -> Decorator:
    """``--pair CODE``: the one-time code from central's ``pair`` command (checked here)."""

    def check(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            pairing.normalize(value)
        except ProtocolError as exc:
            raise click.BadParameter(str(exc)) from None
        return value

    return click.option(
        "--pair", "pair_code", metavar="CODE", default=None, callback=check,
        help=f"Pair with central first, {how}, using the one-time code its `pair` command "
             "printed; the credential is then stored where --credentials says.")

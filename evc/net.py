"""Addresses: ``HOST:PORT`` parsing and a port check, the same for every command."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from evc.errors import ConfigError


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def pair(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True)
class Bootstrap:
    """Kafka brokers to start from: one ``HOST:PORT``, or several (a cluster) by commas."""

    addresses: tuple[Address, ...]

    def __str__(self) -> str:
        return ",".join(str(a) for a in self.addresses)


def parse_bootstrap(text: str, *, what: str = "Kafka address") -> Bootstrap:
    return Bootstrap(tuple(parse_addresses(text, what=what)))


def parse_address(text: str, *, default_host: str | None = None, what: str = "address") -> Address:
    """``HOST:PORT`` (or ``PORT`` when ``default_host`` is given) -> Address.

    Raises ConfigError with a message that names ``what`` and the bad text.
    """
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    if not sep:
        if default_host is None:
            raise ConfigError(f"bad {what} {text!r}: expected HOST:PORT")
        host, port_text = default_host, raw
    host = host.strip("[]")
    if not host:
        if default_host is None:
            raise ConfigError(f"bad {what} {text!r}: missing host, expected HOST:PORT")
        host = default_host
    if any(c.isspace() for c in host) or "/" in host:
        raise ConfigError(f"bad {what} {text!r}: {host!r} is not a host name or address")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad {what} {text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"bad {what} {text!r}: port must be 1-65535")
    return Address(host, port)


def parse_addresses(text: str, *, what: str = "address") -> list[Address]:
    """``HOST:PORT[,HOST:PORT...]`` -> addresses (at least one)."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"bad {what} {text!r}: expected HOST:PORT")
    return [parse_address(p, what=what) for p in parts]


def port_free(addr: Address) -> bool:
    """True when ``addr`` can be bound now (nobody listens there)."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr.pair)
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` now (the system's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])

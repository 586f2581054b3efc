"""How every Kafka client of evc is configured: the login and the reconnect policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_CONNECT_TIMEOUT = 10.0

MAX_BLOCK_MS = 1000  # send() waits at most this long for metadata or buffer space

@dataclass(frozen=True)
class Sasl:
    """A Kafka user (SASL/SCRAM-SHA-256), for a broker started with `evc broker --secure`."""

    user: str
    password: str

    def client_config(self) -> dict[str, Any]:
        return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_plain_username": self.user, "sasl_plain_password": self.password}


# kafka-python waits up to 30 s between two tries to reach a broker that went away (the
# wait doubles each time): a broker that was stopped for 30 s would then be reached again
# by its clients up to 30 s after it returned (an engine's readings, a final reading,
# waiting that long). Trying again at least every second costs a refused connection.
RECONNECT_BACKOFF_MAX_MS = 1000


def base_config(sasl: Sasl | None) -> dict[str, Any]:
    """What every client of this module is given: the login (if any) and the reconnect
    policy."""
    config: dict[str, Any] = {"reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS}
    if sasl is not None:
        config.update(sasl.client_config())
    return config


def client_config(sasl: Sasl | None) -> dict[str, Any]:
    """A producer's or consumer's: ``base_config`` without kafka-python's metrics. It
    records sensors for every request, batch and fetch (~6 % of a busy central's CPU in
    benchmarks/profile.sh) and evc reads none of them. (Its admin client has no switch.)"""
    return {**base_config(sasl), "metrics_enabled": False}


"""The network's Kafka vocabulary: topic names and where a record came from.

Topic names are the seed's; every component may prefix them (``--topic-prefix``)
so that several networks share one broker. Only ``bus/`` talks to Kafka; the
rule modules use these names and ``Delivery`` without importing the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

REQUESTS = "requests_topic"  # driver -> central: charge and end requests
TELEMETRY = "telemetry_topic"  # engine -> central (and its driver): readings
CONTROL = "control_topic"  # central -> engines (orders) and drivers (answers, tickets)
NETWORK = "network_topic"  # central -> anyone: its liveness and each CP's public state
LEASE = "central_lease"  # one partition: the central that holds it is the active one
CHANGELOG = "central_changelog"  # active central -> standby: every stored record (one partition)
OPERATOR = "operator_topic"  # operators' clients (evc web) <-> central: signed commands, answers
ALL_TOPICS = (REQUESTS, TELEMETRY, CONTROL, NETWORK, LEASE, CHANGELOG, OPERATOR)
ONE_PARTITION = frozenset({LEASE, CHANGELOG})
COMPACTED = {NETWORK: {"cleanup.policy": "compact", "segment.ms": "60000",
                       "min.cleanable.dirty.ratio": "0.1", "delete.retention.ms": "60000"},
             CHANGELOG: {"cleanup.policy": "compact", "segment.ms": "60000",
                         "min.cleanable.dirty.ratio": "0.2"}}
"""Topic configs: network_topic keeps the latest record per key (a CP, or central);
central_changelog the latest version of each stored record (removals kept a day)."""
CENTRAL_KEY = "@central"  # network_topic key of central's heartbeat (never a valid CP id)
STANDBY_KEY = "@standby/"  # network_topic keys of standby centrals: @standby/<who>


@dataclass(frozen=True)
class Delivery:
    """Where a consumed record came from: its identity for idempotence and acks."""

    topic: str
    partition: int
    offset: int
    timestamp: float = 0.0  # the record's Kafka timestamp, seconds since the epoch

    @property
    def ref(self) -> str:
        """``topic:partition:offset``, the id of a record that carries none of its own."""
        return f"{self.topic}:{self.partition}:{self.offset}"

"""A secure broker: one SCRAM user per role, and what each role may do (Kafka ACLs)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from evc.bus.client import KafkaBus
from evc.bus.config import Sasl
from evc.bus.errors import kafka_errors
from evc.errors import BusError
from evc.protocol.topics import CHANGELOG, CONTROL, LEASE, NETWORK, OPERATOR, REQUESTS, TELEMETRY

ROLES = ("central", "engine", "driver", "viewer", "web", "ocpp")


def _allow(topics: Iterable[str], *ops: str) -> list[tuple[str, str, str]]:
    return [("topic", t, op) for t in topics for op in ops]


def role_acls(prefix: str) -> dict[str, list[tuple[str, str, str]]]:
    """What each Kafka user may do: (resource type, name, operation). Kafka's ACLs are per
    topic, not per key: a driver may read every answer on control_topic; it cannot forge
    one (central signs them) nor write anything but requests."""
    t = {n: f"{prefix}{n}" for n in (REQUESTS, TELEMETRY, CONTROL, NETWORK, LEASE, CHANGELOG,
                                     OPERATOR)}
    read = ("READ", "DESCRIBE")
    write = ("WRITE", "DESCRIBE")
    return {
        "central": _allow([t[REQUESTS], t[TELEMETRY], t[LEASE], t[NETWORK], t[CHANGELOG],
                           t[OPERATOR]], *read)
        + _allow([t[CONTROL], t[NETWORK], t[CHANGELOG], t[OPERATOR]], *write)
        + [("group", f"{prefix}evc-central", "READ"),
           ("group", f"{prefix}evc-central-lease", "READ"),
           ("transactional_id", f"{prefix}evc-central", "WRITE"),
           ("transactional_id", f"{prefix}evc-central", "DESCRIBE"),
           ("cluster", "kafka-cluster", "IDEMPOTENT_WRITE")],
        "engine": _allow([t[TELEMETRY]], *write) + _allow([t[CONTROL], t[NETWORK]], *read)
        + [("cluster", "kafka-cluster", "IDEMPOTENT_WRITE")],
        "driver": _allow([t[REQUESTS]], *write)
        + _allow([t[CONTROL], t[TELEMETRY], t[NETWORK]], *read)
        + [("cluster", "kafka-cluster", "IDEMPOTENT_WRITE")],
        "viewer": _allow([t[NETWORK]], *read),
        # evc ocpp: an engine's part for its chargers, and their cards' requests
        "ocpp": _allow([t[TELEMETRY], t[REQUESTS]], *write)
        + _allow([t[CONTROL], t[NETWORK]], *read)
        + [("cluster", "kafka-cluster", "IDEMPOTENT_WRITE")],
        # evc web: the network and central's state to show, operators' commands to send
        # (each signed by its operator: only central's accounts can make one count)
        "web": _allow([t[NETWORK], t[CHANGELOG], t[OPERATOR]], *read)
        + _allow([t[OPERATOR]], *write) + [("cluster", "kafka-cluster", "IDEMPOTENT_WRITE")],
    }


def provision(bootstrap: str, admin: Sasl, passwords: Mapping[str, str], prefix: str = "",
              partitions: int = 3) -> None:
    """On a secure broker: evc's topics, one SCRAM user per role, and each role's ACLs."""
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
        UserScramCredentialUpsertion,
    )

    bus = KafkaBus(bootstrap, prefix=prefix, client_id="evc-provision", sasl=admin)
    try:
        bus.ensure_topics(partitions=partitions)
        client = bus._admin()
        try:
            with kafka_errors("cannot create the Kafka users"):
                errors = client.alter_user_scram_credentials([
                    UserScramCredentialUpsertion(user, "SCRAM-SHA-256", password)
                    for user, password in passwords.items()])
            failed = {u: e for u, e in errors.items() if e}
            if failed:
                raise BusError(f"cannot create the Kafka users: {failed}")
            kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
                     "cluster": ResourceType.CLUSTER,
                     "transactional_id": ResourceType.TRANSACTIONAL_ID}
            acls = [ACL(principal=f"User:{user}", host="*",
                        operation=ACLOperation[op], permission_type=ACLPermissionType.ALLOW,
                        resource_pattern=ResourcePattern(kinds[kind], name,
                                                         ACLResourcePatternType.LITERAL))
                    for user, rules in role_acls(prefix).items() if user in passwords
                    for kind, name, op in rules]
            with kafka_errors("cannot create the Kafka ACLs"):
                result = client.create_acls(acls)
            if result.get("failed"):
                raise BusError(f"cannot create the Kafka ACLs: {result['failed'][:3]}")
        finally:
            client.close()
    finally:
        bus.close()


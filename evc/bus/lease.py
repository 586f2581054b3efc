"""``Lease``: which central is the active one, decided by Kafka's group coordinator."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from kafka import (
    ConsumerRebalanceListener,
    KafkaConsumer,
)
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.errors import (
    KafkaError,
)
from kafka.structs import MemberState

from evc.bus.config import client_config
from evc.bus.errors import kafka_errors

if TYPE_CHECKING:
    from evc.bus.client import KafkaBus

log = logging.getLogger(__name__)


class _WatchedAssignor(CooperativeStickyAssignor):  # type: ignore[misc]  # untyped
    """kafka-python's cooperative-sticky assignor, watched for one failure: a group leader
    whose metadata does not yet hold the lease topic's partitions (it logs "No partition
    metadata for topic") gives the lease to nobody, and kafka-python may never rebalance
    again (its snapshot of the metadata can already hold the partition). ``blind`` says
    it happened, so the lease can have the group join again."""

    def __init__(self, topic: str) -> None:
        super().__init__()
        self.topic = topic
        self.blind = threading.Event()

    def assign(self, cluster: Any, members: Any) -> Any:
        if cluster.partitions_for_topic(self.topic) is None:
            self.blind.set()
        else:  # a later assignment that saw it (kafka-python often rebalances by itself)
            self.blind.clear()
        return super().assign(cluster, members)


class Lease(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python is untyped
    """Leadership through Kafka's group coordinator: one member of a group holds the single
    partition of a lease topic; the coordinator elects and fences, nothing home-made.

    Static membership (``instance`` = ``group.instance.id``): the same process started
    again takes its place at once, while a different one waits for it to leave or for
    its session to time out. ``held`` is set while this member holds the partition,
    ``decided`` once the coordinator has answered (held or not).
    """

    SETTLE = 1.5  # s: longer than the metadata's refresh (metadata_max_age_ms)

    def __init__(self, bus: KafkaBus, topic: str, group: str, instance: str,
                 session_timeout: float = 6.0) -> None:
        self.held = threading.Event()
        self.decided = threading.Event()
        self._closed = False
        self._topic = bus.topic(topic)
        self._assignor = _WatchedAssignor(self._topic)
        self._known_since = 0.0  # monotonic: the partition known after a blind assignment
        with kafka_errors(f"cannot join group {group}", bus.bootstrap, bus.connect_timeout):
            self._consumer = KafkaConsumer(
                bootstrap_servers=bus.bootstrap, client_id=f"{bus.client_id}-lease",
                **client_config(bus.sasl),
                group_id=group, group_instance_id=instance, enable_auto_commit=False,
                # the holder keeps its partition when another member joins: never moved
                # away from a live central by a newcomer
                partition_assignment_strategy=[self._assignor],
                session_timeout_ms=int(session_timeout * 1000), heartbeat_interval_ms=1000,
                max_poll_interval_ms=max(10000, int(session_timeout * 2000)),
                # a lease topic created a moment ago may be missing from the first
                # metadata: the group is then assigned nothing, and only a metadata
                # refresh (5 min by default) brings the rebalance that assigns it
                metadata_max_age_ms=1000,
                bootstrap_timeout_ms=int(bus.connect_timeout * 1000))
            self._consumer.subscribe([self._topic], listener=self)

    # ConsumerRebalanceListener (called on the consumer's own loop: quick). Cooperative
    # rebalancing: ``assigned`` and ``revoked`` list only what changed for this member.
    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked and not self._closed:
            self.held.clear()

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("lease: assigned %s", sorted(tp.partition for tp in assigned) or "nothing")
        if assigned:
            self.held.set()
            self.decided.set()

    def on_partitions_lost(self, lost: Any) -> None:
        self.on_partitions_revoked(lost)

    def _rejoin_if_blind(self, now: float | None = None) -> bool:
        """After an assignment made without the lease's partition (this member led it),
        and none since, join the group again once the partition has been known for a
        second (time for kafka-python's own rebalance): the coordinator then assigns it
        (to a live holder, or to one of the members waiting for it)."""
        now = time.monotonic() if now is None else now
        if not self._assignor.blind.is_set() or not self._consumer.partitions_for_topic(
                self._topic):
            self._known_since = 0.0
            return False
        self._known_since = self._known_since or now
        if now - self._known_since < self.SETTLE:
            return False
        self._assignor.blind.clear()
        self._known_since = 0.0
        log.warning("lease: the group was assigned before the lease's partition was known; "
                    "joining again")
        self._consumer._coordinator.request_rejoin()
        return True

    REJOIN = 5.0  # s: undecided this long (no assignment, nobody known to hold it): rejoin

    def run(self, stop: threading.Event) -> None:
        """Keep the membership alive (poll) until ``stop``; then leave the group."""
        stable_since = 0.0
        last_try = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    self._consumer.poll(timeout_ms=200)
                except KafkaError as exc:
                    log.warning("lease poll failed, retrying: %s", exc)
                    stop.wait(0.5)
                    continue
                if self._rejoin_if_blind():
                    stable_since = 0.0
                    continue
                if self.decided.is_set():
                    continue
                if time.monotonic() - last_try >= self.REJOIN:
                    # Neither assigned nor told that another member holds it: whatever
                    # kafka-python missed (a blind assignment it never noticed, a lost
                    # SyncGroup), a new join makes the coordinator decide again; a live
                    # holder keeps its partition (cooperative-sticky).
                    last_try = time.monotonic()
                    stable_since = 0.0
                    log.warning("lease: no decision from the group coordinator yet; "
                                "joining again")
                    self._consumer._coordinator.request_rejoin()
                    continue
                # Joined and assigned nothing: another member holds the lease, unless the
                # assignment was made before the lease's partition was known. So: stable,
                # the partition known, and still so after a metadata refresh (which would
                # have started a rebalance): the coordinator has spoken.
                if self._consumer.group_metadata().state == MemberState.STABLE and \
                        self._consumer.partitions_for_topic(self._topic):
                    stable_since = stable_since or time.monotonic()
                    if time.monotonic() - stable_since >= self.SETTLE:
                        log.info("lease: held by another member")
                        self.decided.set()
                else:
                    stable_since = 0.0
        finally:
            self._closed = True
            try:
                self._consumer.close(autocommit=False, timeout_ms=1000)
            except Exception as exc:  # noqa: BLE001 - closing must not raise at shutdown
                log.warning("lease close: %s", exc)


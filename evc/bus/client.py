"""``KafkaBus``: a process's producer plus factories for admin work and consumers, and how a
process reaches the broker (``open_bus``, ``retrying``, ``ping``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from kafka import (
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka.errors import (
    KafkaError,
    TopicAlreadyExistsError,
)

from evc.bus.config import (
    DEFAULT_CONNECT_TIMEOUT,
    MAX_BLOCK_MS,
    Sasl,
    base_config,
    client_config,
)
from evc.bus.consumer import Consumer
from evc.bus.errors import bus_error, kafka_errors
from evc.bus.records import encode, partition_for
from evc.errors import BusError
from evc.ports import Done
from evc.protocol.messages import Message
from evc.protocol.topics import ALL_TOPICS, COMPACTED, ONE_PARTITION

log = logging.getLogger(__name__)


TOPIC_AUTHORIZATION_FAILED = 29  # Kafka's error code

class KafkaBus:
    """A producer plus factories for admin work and consumers, for one process."""

    def __init__(
        self,
        bootstrap: str,
        *,
        prefix: str = "",
        client_id: str = "evc",
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        sasl: Sasl | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.client_id = client_id
        self.connect_timeout = connect_timeout
        self.sasl = sasl
        self._closed = False
        self._partitions: dict[str, int] = {}
        self._gauge: tuple[KafkaAdminClient, KafkaConsumer] | None = None
        with kafka_errors(f"cannot use Kafka broker at {bootstrap}", bootstrap, connect_timeout,
                          sasl.user if sasl else ""):
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap, **client_config(sasl),
                client_id=client_id,
                acks="all",
                linger_ms=2,
                max_block_ms=MAX_BLOCK_MS,
                bootstrap_timeout_ms=int(connect_timeout * 1000),
            )

    @property
    def cluster_id(self) -> str:
        """The Kafka cluster's id (from the metadata the producer fetched at start): which
        broker's network this is, whatever its address."""
        metadata = getattr(self._producer, "_metadata", None)
        return str(getattr(metadata, "cluster_id", None) or "")

    # ------------------------------------------------------------------ topics
    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _admin(self) -> KafkaAdminClient:
        with kafka_errors(f"cannot use Kafka broker at {self.bootstrap}", self.bootstrap,
                          self.connect_timeout):
            return KafkaAdminClient(
                bootstrap_servers=self.bootstrap, **base_config(self.sasl),
                client_id=f"{self.client_id}-admin",
                bootstrap_timeout_ms=int(self.connect_timeout * 1000),
            )

    def ensure_topics(self, names: Iterable[str] = ALL_TOPICS, partitions: int = 3) -> None:
        """Create the (prefixed) topics if missing and wait until they have leaders."""
        names = list(names)
        full = [self.topic(n) for n in names]
        admin = self._admin()
        try:
            # On a cluster of three brokers or more every topic has 3 replicas, and a write
            # (acks=all) needs 2 of them: any one broker may die without losing anything.
            try:
                brokers = len(admin.describe_cluster().get("brokers", [])) or 1
            except KafkaError:  # not allowed to ask (a secure broker): a single broker
                brokers = 1
            replicas = 3 if brokers >= 3 else 1
            spec: dict[str, dict[str, Any]] = {
                self.topic(n): {"num_partitions": 1 if n in ONE_PARTITION else partitions,
                                "replication_factor": replicas}
                for n in names}
            for n in names:
                configs = dict(COMPACTED.get(n, {}))
                if replicas >= 3:
                    configs["min.insync.replicas"] = "2"
                if configs:
                    spec[self.topic(n)]["configs"] = configs
            with kafka_errors(f"cannot create topics {', '.join(full)}"):
                try:
                    result = admin.create_topics(spec, raise_errors=False)
                except TopicAlreadyExistsError:
                    result = {}
                # A topic this user may not even see (a secure broker's ACLs) is not waited
                # for: whoever may use it has made sure it exists.
                hidden = {t.get("name") for t in result.get("topics", [])
                          if t.get("error_code") == TOPIC_AUTHORIZATION_FAILED}
                visible = [t for t in full if t not in hidden]
                if visible:
                    admin.wait_for_topics(visible, timeout_ms=int(self.connect_timeout * 1000))
        finally:
            admin.close()

    def delete_topics(self, names: Iterable[str] = ALL_TOPICS) -> None:
        """Delete the (prefixed) topics: a benchmark's or a test's network, once done with
        it (a broker that keeps thousands of idle partitions gets slower)."""
        admin = self._admin()
        try:
            with kafka_errors("cannot delete topics"):
                admin.delete_topics([self.topic(n) for n in names], raise_errors=False)
        finally:
            admin.close()

    def partitions(self, name: str) -> int:
        """How many partitions the (unprefixed) topic has; cached."""
        topic = self.topic(name)
        if topic not in self._partitions:
            deadline = time.monotonic() + self.connect_timeout
            while True:
                try:
                    ids = self._producer.partitions_for(topic)
                except KafkaError:  # not there yet (or metadata in flight)
                    ids = None
                if ids:
                    self._partitions[topic] = len(ids)
                    break
                if time.monotonic() > deadline:  # missing, or the broker is away
                    raise BusError(f"topic {topic} does not exist (did central create it?)",
                                   retriable=True)
                time.sleep(0.1)
        return self._partitions[topic]

    def group_lag(self, group: str, names: Iterable[str]) -> int:
        """Records of ``names`` that ``group`` has not committed yet (a gauge of its lag)."""
        if self._gauge is None:
            self._gauge = (self._admin(), KafkaConsumer(bootstrap_servers=self.bootstrap,
                                                        **client_config(self.sasl)))
        admin, consumer = self._gauge
        tps = [TopicPartition(self.topic(n), p) for n in names for p in range(
            self.partitions(n))]
        with kafka_errors(f"cannot read the offsets of group {group}"):
            committed = admin.list_group_offsets({group: tps}).get(group, {})
            ends = consumer.end_offsets(tps)
        done = {tp: max(0, meta.offset) for tp, meta in committed.items()}  # -1: none yet
        return sum(max(0, ends[tp] - done.get(tp, 0)) for tp in tps)

    def partition_of(self, name: str, key: str) -> int:
        return partition_for(key, self.partitions(name))

    # ------------------------------------------------------------------ produce
    def send(self, topic: str, message: Message | None, key: str,
             on_done: Done | None = None) -> None:
        """Queue ``message`` on ``topic`` (unprefixed name), keyed; never blocks on acks.

        ``message`` None is a tombstone (``key`` removed from a compacted topic).
        ``on_done(ok, error)`` runs once the broker took it (or gave up); a
        BusError here means it was not even queued (retriable: try again later).
        """
        if self._closed:
            raise BusError("bus closed", retriable=True)  # a restart sends it
        kind = message.TYPE if message is not None else "tombstone"
        with kafka_errors(f"cannot send {kind} to {topic}"):
            future = self._producer.send(
                self.topic(topic), value=encode(message) if message is not None else None,
                key=key.encode("utf-8"))
        if on_done is not None:
            what = f"{kind} to {topic}"
            future.add_callback(lambda _meta: on_done(None))
            future.add_errback(lambda exc: on_done(bus_error(what, exc)))
        else:
            future.add_errback(self._on_send_error, kind, topic)

    def _on_send_error(self, kind: str, topic: str, exc: BaseException) -> None:
        log.error("Kafka did not take %s on %s: %s", kind, topic, exc)

    def flush(self, timeout: float = 5.0) -> None:
        with kafka_errors("flush"):
            self._producer.flush(timeout=timeout)

    # ------------------------------------------------------------------ consume
    def consumer(
        self,
        topics: Iterable[str],
        *,
        group_id: str | None = None,
        from_beginning: bool | Iterable[str] = False,
        keys: Mapping[str, Iterable[str]] | None = None,
        start: Mapping[tuple[str, int], int] | None = None,
        gather: float = 0.0,
    ) -> Consumer:
        """A consumer of ``topics`` (unprefixed names).

        It reads every partition, or with ``keys`` only the partitions that can
        hold those keys' records. ``start`` positions partitions ((prefixed topic,
        partition) -> offset); the others begin where ``group_id`` last committed,
        else at the end, or at the beginning for ``from_beginning`` (True, or the
        names of the topics to read from their beginning). ``gather`` (seconds): a
        consumer of much traffic lets the broker collect records that long per fetch.
        """
        return Consumer(self, list(topics), group_id=group_id, from_beginning=from_beginning,
                        keys=keys, start=start, gather=gather)

    # ------------------------------------------------------------------ lifecycle
    def close(self, timeout: float = 1.0) -> None:
        """Flush what is queued (bounded) and close the producer; safe twice.

        Consumers belong to the threads that run them and close themselves
        when their ``run`` ends (kafka-python consumers are not thread-safe).
        """
        if self._closed:
            return
        self._closed = True
        if self._gauge is not None:
            for client in self._gauge:
                try:
                    client.close()
                except Exception as exc:  # noqa: BLE001 - closing must not raise
                    log.warning("close: %s", exc)
        try:
            self._producer.close(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - closing must not raise at shutdown
            log.warning("producer close: %s", exc)

    def __enter__(self) -> KafkaBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

T = TypeVar("T")

def retrying(what: Callable[[], T], *, wait: float, stop: threading.Event | None = None,
             note: Callable[[str], Any] | None = None, bootstrap: str = "") -> T:
    """``what()``, tried again while it fails with a retriable BusError, for ``wait`` s.

    A process (re)started during a broker outage waits for the broker (``--kafka-wait``)
    instead of exiting; past ``wait`` (or on a non-retriable error) the BusError is raised.
    """
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            result = what()
            if said and note is not None:
                note(f"Kafka broker at {bootstrap} reached")
            return result
        except BusError as exc:
            if not exc.retriable or time.monotonic() + 1.0 >= deadline or (
                    stop is not None and stop.is_set()):
                raise
            if note is not None and not said:
                note(f"Kafka broker at {bootstrap} unavailable ({exc}); trying again for up "
                     f"to {wait:g} s (--kafka-wait)")
                said = True
            if stop is not None:
                stop.wait(1.0)
            else:
                time.sleep(1.0)


def open_bus(bootstrap: str, *, prefix: str = "", client_id: str = "evc",
             wait: float = DEFAULT_CONNECT_TIMEOUT, partitions: int = 3,
             stop: threading.Event | None = None,
             note: Callable[[str], Any] | None = None, sasl: Sasl | None = None) -> KafkaBus:
    """A bus whose topics exist, trying for ``wait`` s while the broker is unreachable."""
    deadline = time.monotonic() + wait

    def attempt() -> KafkaBus:
        timeout = max(1.0, min(DEFAULT_CONNECT_TIMEOUT, deadline - time.monotonic()))
        bus = KafkaBus(bootstrap, prefix=prefix, client_id=client_id, connect_timeout=timeout,
                       sasl=sasl)
        try:
            bus.ensure_topics(partitions=partitions)
        except BaseException:
            bus.close(timeout=0.2)
            raise
        bus.connect_timeout = DEFAULT_CONNECT_TIMEOUT
        return bus

    return retrying(attempt, wait=wait, stop=stop, note=note, bootstrap=bootstrap)


def ping(bootstrap: str, timeout: float = 2.0, sasl: Sasl | None = None) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request within ``timeout``."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, **base_config(sasl),
            client_id="evc-ping",
            bootstrap_timeout_ms=int(timeout * 1000),
            request_timeout_ms=max(1000, int(timeout * 1000)),
        )
    except (KafkaError, ValueError, OSError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


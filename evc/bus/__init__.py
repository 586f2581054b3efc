"""KafkaBus: the only module that imports kafka-python.

    with KafkaBus("10.0.0.2:9092", prefix="demo-") as bus:
        bus.ensure_topics()
        bus.send(REQUESTS, ChargeRequest(...), key="CP-01", on_done=confirmed)
        consumer = bus.consumer([CONTROL], keys={CONTROL: ["D-23"]})  # only my partition
        consumer.run(handle, stop_event)                               # typed messages

Every Kafka failure surfaces as ``BusError`` through one mapping
(``kafka_errors``), keeping its cause and saying whether a retry may help.
``send`` never blocks long (``max_block_ms``): it queues, and ``on_done``
reports the broker's verdict from the producer's thread. Malformed records are
logged and handed to ``on_skip`` (never fatal), so the owner can account for
their offsets in order.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import (
    ConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.errors import (
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
    TopicAlreadyExistsError,
)
from kafka.partitioner.default import murmur2
from kafka.structs import MemberState, OffsetAndMetadata

from evc.errors import BusError, ProtocolError
from evc.protocol.messages import Message, Removed, from_record
from evc.protocol.topics import ALL_TOPICS, COMPACTED, ONE_PARTITION, Delivery

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 10.0
GATHER_BYTES = 256 << 10  # a gathering fetch returns early once it holds this much
GATHER_FROM, GATHER_UNTIL = 50, 20  # records a second: a gathering consumer is busy
TOPIC_AUTHORIZATION_FAILED = 29  # Kafka's error code
MAX_BLOCK_MS = 1000  # send() waits at most this long for metadata or buffer space

Done = Callable[[bool, str], None]
"""``on_done(ok, error)``: called once per send, from the producer's I/O thread."""


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


def _auth(sasl: Sasl | None) -> dict[str, Any]:
    """What every client of this module is given: the login (if any) and the reconnect
    policy."""
    config: dict[str, Any] = {"reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS}
    if sasl is not None:
        config.update(sasl.client_config())
    return config


@contextlib.contextmanager
def kafka_errors(what: str, bootstrap: str = "", timeout: float = 0.0,
                 user: str = "") -> Iterator[None]:
    """The one place kafka-python's errors become ``BusError`` (cause kept)."""
    try:
        yield
    except BusError:
        raise
    except KafkaTimeoutError as exc:
        if bootstrap and user:
            raise BusError(f"cannot reach Kafka broker at {bootstrap} within {timeout:g} s, "
                           f"or it refused the login of Kafka user {user!r} (check "
                           "--kafka-user and --kafka-password)", retriable=True) from exc
        if bootstrap:
            raise BusError(f"cannot reach Kafka broker at {bootstrap} within {timeout:g} s "
                           "(is it running? try `evc broker start`)", retriable=True) from exc
        raise BusError(f"{what}: Kafka did not answer in time", retriable=True) from exc
    except KafkaError as exc:
        raise BusError(f"{what}: {exc}", retriable=bool(exc.retriable)) from exc
    except (ValueError, OSError) as exc:
        raise BusError(f"{what}: {exc}") from exc


def encode(message: Message) -> bytes:
    return json.dumps(message.to_wire(), ensure_ascii=False, separators=(",", ":")).encode()


def decode(raw: bytes | None, delivery: Delivery | None = None) -> Message:
    """Record value -> typed message; ProtocolError for anything malformed."""
    if raw is None:
        raise ProtocolError("record has no value")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("record is not UTF-8 JSON") from exc
    return from_record(obj, delivery)


@functools.lru_cache(maxsize=1 << 16)
def partition_for(key: str, partitions: int) -> int:
    """The partition the producer's default partitioner gives ``key`` (murmur2, as Java;
    kafka-python's is pure Python, so each key's is worked out once)."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


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
                bootstrap_servers=bootstrap, **_auth(sasl),
                client_id=client_id,
                acks="all",
                linger_ms=2,
                max_block_ms=MAX_BLOCK_MS,
                bootstrap_timeout_ms=int(connect_timeout * 1000),
            )

    # ------------------------------------------------------------------ topics
    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _admin(self) -> KafkaAdminClient:
        with kafka_errors(f"cannot use Kafka broker at {self.bootstrap}", self.bootstrap,
                          self.connect_timeout):
            return KafkaAdminClient(
                bootstrap_servers=self.bootstrap, **_auth(self.sasl),
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
                                                        **_auth(self.sasl)))
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
            raise BusError("bus closed")
        kind = message.TYPE if message is not None else "tombstone"
        with kafka_errors(f"cannot send {kind} to {topic}"):
            future = self._producer.send(
                self.topic(topic), value=encode(message) if message is not None else None,
                key=key.encode("utf-8"))
        if on_done is not None:
            future.add_callback(lambda _meta: on_done(True, ""))
            future.add_errback(lambda exc: on_done(False, str(exc) or type(exc).__name__))
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


def _poll(consumer: KafkaConsumer, timeout: float, what: str) -> dict[Any, list[Any]]:
    """One poll of a kafka-python consumer; a failure (the broker away) is logged, waited
    out a little, and is an empty poll: the caller's loop tries again."""
    try:
        return consumer.poll(timeout_ms=int(timeout * 1000))  # type: ignore[no-any-return]
    except KafkaError as exc:
        log.warning("%s failed, retrying: %s", what, exc)
        time.sleep(min(timeout, 0.5))
        return {}


class Consumer:
    """One kafka-python consumer, owned by the thread that calls ``run``.

    Partitions are assigned explicitly (no group rebalances: nothing to wait
    for at start, nobody else can take them). With ``group_id`` it commits the
    offsets its owner acknowledged with ``ack`` (from any thread, in order per
    partition), and starts where the group last committed.
    """

    def __init__(
        self,
        bus: KafkaBus,
        topics: list[str],
        *,
        group_id: str | None,
        from_beginning: bool | Iterable[str],
        keys: Mapping[str, Iterable[str]] | None,
        start: Mapping[tuple[str, int], int] | None,
        gather: float = 0.0,
    ) -> None:
        self._bus = bus
        self.live_from: dict[tuple[str, int], int] = {}  # end offsets when assigned
        self.topics = [bus.topic(t) for t in topics]
        self.group_id = group_id
        self._acked: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._ack_lock = threading.Lock()
        self._closed = False
        self._close_lock = threading.Lock()
        self.ready = threading.Event()  # set once partitions are assigned and positioned
        self._retarget: dict[str, tuple[list[str], float]] = {}  # applied by the owner thread
        self._retarget_lock = threading.Lock()
        self.caught_up = threading.Event()  # set once every partition reached live_from
        self._gather = gather
        self._gathering = False
        self._window = (time.monotonic(), 0)  # since when, records read since
        timeout_ms = int(bus.connect_timeout * 1000)
        with kafka_errors(f"cannot consume {', '.join(self.topics)}", bus.bootstrap,
                          bus.connect_timeout):
            self._consumer = KafkaConsumer(
                bootstrap_servers=bus.bootstrap, **_auth(bus.sasl),
                client_id=f"{bus.client_id}-consumer",
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest" if from_beginning is True else "latest",
                bootstrap_timeout_ms=timeout_ms,
                # the broker holds a fetch up to 500 ms and answers the moment a record
                # arrives; a ``gather`` consumer, while busy, lets it collect records for
                # that long instead (see _adapt)
                fetch_max_wait_ms=500, fetch_min_bytes=1,
                # central sends in transactions: what a deposed central left open and
                # the new one aborted is never seen
                isolation_level="read_committed",
            )
            try:
                self._assign(topics, from_beginning, keys or {}, start or {})
            except BaseException:
                self._consumer.close(autocommit=False)
                raise

    def _assign(self, names: list[str], from_beginning: bool | Iterable[str],
                keys: Mapping[str, Iterable[str]], start: Mapping[tuple[str, int], int]) -> None:
        early = ({self._bus.topic(n) for n in names} if from_beginning is True
                 else set() if from_beginning is False
                 else {self._bus.topic(n) for n in from_beginning})
        partitions: list[TopicPartition] = []
        for name in names:
            count = self._bus.partitions(name)
            wanted = keys.get(name)
            ids = (sorted({partition_for(k, count) for k in wanted}) if wanted is not None
                   else list(range(count)))
            partitions += [TopicPartition(self._bus.topic(name), p) for p in ids]
        self._consumer.assign(partitions)
        committed: dict[TopicPartition, int] = {}
        if self.group_id is not None:
            for tp in partitions:
                offset = self._consumer.committed(tp)
                if offset is not None:
                    committed[tp] = offset
        for tp in partitions:
            offset = start.get((tp.topic, tp.partition), committed.get(tp))
            if offset is not None:
                self._consumer.seek(tp, offset)
            elif tp.topic in early:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek_to_end(tp)
        # Resolve positions now, so nothing produced after this call is missed.
        for tp in partitions:
            self._consumer.position(tp)
        ends = self._consumer.end_offsets(partitions)
        self.live_from = {(tp.topic, tp.partition): int(off) for tp, off in ends.items()}
        self.ready.set()

    def retarget(self, name: str, keys: Iterable[str]) -> None:
        """Read only the partitions of ``name`` (unprefixed) that hold ``keys``' records,
        from the next poll on (any thread may ask): new partitions from a second before
        the asking, so nothing written meanwhile is missed."""
        with self._retarget_lock:
            self._retarget[name] = (list(keys), time.time() - 1.0)

    def _apply_retarget(self) -> None:
        with self._retarget_lock:
            asked, self._retarget = self._retarget, {}
        if not asked:
            return
        current = set(self._consumer.assignment())
        for name, (keys, since) in asked.items():
            topic = self._bus.topic(name)
            count = self._bus.partitions(name)
            wanted = {TopicPartition(topic, partition_for(k, count)) for k in keys}
            kept = {tp for tp in current if tp.topic != topic}
            added = wanted - current
            current = kept | wanted
            self._consumer.assign(sorted(current, key=lambda tp: (tp.topic, tp.partition)))
            found = self._consumer.offsets_for_times({tp: int(since * 1000) for tp in added})
            for tp in added:
                at = found.get(tp)
                if at is not None:
                    self._consumer.seek(tp, at.offset)
                else:
                    self._consumer.seek_to_end(tp)
                self._consumer.position(tp)

    def _check_caught_up(self) -> None:
        for tp in self._consumer.assignment():
            end = self.live_from.get((tp.topic, tp.partition), 0)
            if self._consumer.position(tp) < end:
                return
        self.caught_up.set()

    def is_live(self, delivery: Delivery) -> bool:
        """True for a record written after this consumer started (not history)."""
        return delivery.offset >= self.live_from.get((delivery.topic, delivery.partition), 0)

    def ack(self, delivery: Delivery) -> None:
        """The owner applied this record (and every earlier one of its partition)."""
        tp = TopicPartition(delivery.topic, delivery.partition)
        with self._ack_lock:
            if delivery.offset + 1 > self._acked.get(tp, -1):
                self._acked[tp] = delivery.offset + 1

    def _commit_acked(self, wait: bool = False) -> None:
        """Commit what the owner acknowledged. Between polls without waiting for the
        broker (a synchronous commit per poll held every fetch back by a round trip);
        ``wait`` at the end of ``run``."""
        if self.group_id is None:
            return
        with self._ack_lock:
            due = {tp: off for tp, off in self._acked.items() if self._committed.get(tp) != off}
            if not due:
                return
            self._committed.update(due)  # taken back below if the broker refuses
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in due.items()}
        try:
            if wait:
                self._consumer.commit(offsets)
            else:
                self._consumer.commit_async(offsets, callback=self._committed_async)
        except KafkaError as exc:  # the broker is away: the next round retries
            self._commit_failed(due, exc)

    def _committed_async(self, offsets: Mapping[TopicPartition, Any], result: Any) -> None:
        if isinstance(result, BaseException):
            self._commit_failed({tp: meta.offset for tp, meta in offsets.items()}, result)

    def _commit_failed(self, due: Mapping[TopicPartition, int], exc: BaseException) -> None:
        log.warning("offset commit failed, will retry: %s", exc)
        with self._ack_lock:
            for tp, off in due.items():
                if self._committed.get(tp) == off:
                    del self._committed[tp]

    def poll(self, timeout: float = 0.2,
             on_skip: Callable[[Delivery, str], Any] | None = None
             ) -> list[tuple[Message, Delivery]]:
        """One poll: decoded messages; malformed records are logged and given to ``on_skip``."""
        self._commit_acked()
        try:
            self._apply_retarget()
        except KafkaError as exc:
            log.warning("cannot reassign partitions yet: %s", exc)
        batches = _poll(self._consumer, timeout, "poll")
        out: list[tuple[Message, Delivery]] = []
        for tp, records in batches.items():
            for record in records:
                delivery = Delivery(tp.topic, tp.partition, record.offset,
                                    (record.timestamp or 0) / 1000.0)
                if record.value is None and record.key:  # a tombstone: the key is gone
                    try:
                        out.append((Removed(key=record.key.decode("utf-8")), delivery))
                    except (UnicodeDecodeError, ProtocolError):
                        pass
                    continue
                try:
                    message = decode(record.value, delivery)
                except ProtocolError as exc:
                    log.warning("skipping malformed record %s[%d]@%d: %s",
                                tp.topic, tp.partition, record.offset, exc)
                    if on_skip is not None:
                        on_skip(delivery, str(exc))
                    continue
                out.append((message, delivery))
        if self._gather:
            self._adapt(sum(len(records) for records in batches.values()))
        return out

    def _adapt(self, read: int) -> None:
        """A gathering consumer, busy (GATHER_FROM records a second or more), lets the
        broker collect records for ``gather`` seconds per fetch: kafka-python's cost goes
        with the number of fetches, and a busy one would make hundreds of small ones a
        second. Idle (under GATHER_UNTIL a second), it fetches as others do: the broker
        answers the moment a record arrives, and an idle fetch waits 500 ms."""
        since, count = self._window
        count += read
        now = time.monotonic()
        if now - since < 1.0:
            self._window = (since, count)
            return
        self._window = (now, 0)
        rate = count / (now - since)
        busy = rate >= GATHER_FROM or (self._gathering and rate >= GATHER_UNTIL)
        if busy == self._gathering:
            return
        config = getattr(getattr(self._consumer, "_fetcher", None), "config", None)
        if isinstance(config, dict):  # kafka-python's fetcher reads it for each fetch
            config["fetch_max_wait_ms"] = int(self._gather * 1000) if busy else 500
            config["fetch_min_bytes"] = GATHER_BYTES if busy else 1
            self._gathering = busy

    def run(
        self,
        handle: Callable[[Message, Delivery], Any],
        stop: threading.Event,
        poll_timeout: float = 0.2,
        on_skip: Callable[[Delivery, str], Any] | None = None,
    ) -> None:
        """Poll until ``stop`` is set, handing every message to ``handle``; then close."""
        try:
            while not stop.is_set():
                for message, delivery in self.poll(poll_timeout, on_skip):
                    handle(message, delivery)
                if not self.caught_up.is_set():  # after handing out what was read
                    self._check_caught_up()
            self._commit_acked(wait=True)
        finally:
            self.close()

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._consumer.close(autocommit=False, timeout_ms=1000)
        except Exception as exc:  # noqa: BLE001 - closing must not raise at shutdown
            log.warning("consumer close: %s", exc)


class Transactions:
    """The active central's one producer: everything it sends goes out in Kafka
    transactions, its stored changes (``central_changelog``) with the messages they
    decided, so a reader sees a batch whole or not at all.

    Its ``transactional.id`` is the same for every central of a network: the one that
    calls ``init_transactions`` fences the one before (the broker refuses the older
    producer epoch, carried by every record batch) and aborts what it left open. A
    deposed central's next transaction fails: ``fenced`` is set and it must step down.

    ``send`` and ``replicate`` only queue (any thread); ``run`` (one thread) commits
    what is queued, one transaction at a time. What is queued inside ``batch()`` goes
    into one transaction: the brain's batch, the state it stored and the messages that
    state decided, is seen whole or not at all. A failed transaction is tried again
    whole (with what was queued since); its messages are reported as not sent only when
    this central can send nothing more (fenced, or stopped).
    """

    def __init__(self, bus: KafkaBus, transactional_id: str, changelog: str,
                 timeout: float = 10.0, leader: Callable[[], bool] | None = None) -> None:
        self._bus = bus
        # Whether this central still holds the lease: a "fenced" answer while it does is
        # the coordinator aborting a transaction that outlived its timeout (a broker
        # outage), not another central; then the producer starts again.
        self._leader = leader
        self.transactional_id = transactional_id
        self.changelog = bus.topic(changelog)
        self.timeout = timeout
        self.fenced = threading.Event()
        self.committed = 0  # transactions committed
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._batch = threading.RLock()  # held by whoever queues one batch (``batch``)
        self._changes: dict[str, str | None] = {}  # in order; the latest version of a key
        self._messages: list[tuple[str, Message | None, str, Done | None]] = []
        self._closed = False
        self._producer = self._new_producer()

    def _new_producer(self) -> KafkaProducer:
        bus = self._bus
        with kafka_errors("cannot start Kafka transactions", bus.bootstrap, bus.connect_timeout,
                          bus.sasl.user if bus.sasl else ""):
            producer = KafkaProducer(
                bootstrap_servers=bus.bootstrap, **_auth(bus.sasl),
                client_id=f"{bus.client_id}-txn", transactional_id=self.transactional_id,
                enable_idempotence=True, acks="all", linger_ms=0,
                # the broker answers "concurrent transactions" for a few ms after each
                # commit: retry soon, not after the 100 ms default
                retry_backoff_ms=5, max_block_ms=int(self.timeout * 1000),
                transaction_timeout_ms=int(self.timeout * 1000),
                bootstrap_timeout_ms=int(bus.connect_timeout * 1000))
            try:
                producer.init_transactions()  # fences the previous holder of the id
            except BaseException:
                _discard(producer, 0)
                raise
        return producer

    # ------------------------------------------------------------------ any thread
    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """What is sent and replicated inside is committed in one transaction."""
        with self._batch:
            yield

    def send(self, topic: str, message: Message | None, key: str,
             on_done: Done | None = None) -> None:
        """Like ``KafkaBus.send``: queued for the next transaction."""
        with self._lock:
            if self._closed:
                raise BusError("transactions closed")
            self._messages.append((topic, message, key, on_done))
            self._wake.notify()

    def replicate(self, changes: Iterable[tuple[str, str | None]]) -> None:
        """Stored changes ("<table>/<key>", JSON or None) for the changelog."""
        with self._lock:
            for key, text in changes:
                self._changes.pop(key, None)  # keep the order of the latest versions
                self._changes[key] = text
            self._wake.notify()

    # ------------------------------------------------------------------ its thread
    def run(self, stop: threading.Event) -> None:
        """Commit what is queued until ``stop`` (then once more, bounded), or fenced."""
        try:
            while not self.fenced.is_set():
                with self._lock:
                    if not self._changes and not self._messages:
                        if stop.is_set():
                            break
                        self._wake.wait(0.2)
                        continue
                with self._batch, self._lock:  # never half a batch
                    changes, self._changes = self._changes, {}
                    messages, self._messages = self._messages, []
                if not self._commit(changes, messages):
                    with self._lock:  # again, before what came since; newer versions win
                        for key, text in changes.items():
                            self._changes.setdefault(key, text)
                        self._messages[:0] = messages
                    if stop.is_set() or self.fenced.is_set():
                        break
                    stop.wait(0.5)
        finally:
            with self._lock:
                self._closed = True
                left = self._messages
                self._messages = []
            for _, _, _, on_done in left:
                if on_done is not None:
                    on_done(False, "central stopped")
            _discard(self._producer, 1.0)

    def _commit(self, changes: Mapping[str, str | None],
                messages: list[tuple[str, Message | None, str, Done | None]]) -> bool:
        producer = self._producer
        try:
            producer.begin_transaction()
            # partitions given, not left to kafka-python's partitioner (the same murmur2,
            # computed in pure Python for every record)
            for key, text in changes.items():
                producer.send(self.changelog, key=key.encode("utf-8"), partition=0,
                              value=text.encode("utf-8") if text is not None else None)
            for topic, message, key, _ in messages:
                producer.send(self._bus.topic(topic),
                              value=encode(message) if message is not None else None,
                              key=key.encode("utf-8"),
                              partition=self._bus.partition_of(topic, key))
            self._end(producer, commit=True)
        except (KafkaError, BusError) as exc:
            if self._deposed(exc, producer):
                return False
            log.warning("Kafka transaction failed (%s); trying again", exc)
            self._restart()
            return False
        self.committed += 1
        for _, _, _, on_done in messages:
            if on_done is not None:
                on_done(True, "")
        return True

    def _deposed(self, exc: BaseException, producer: KafkaProducer | None = None) -> bool:
        """Whether ``exc`` says another central took over (fenced, and the lease is
        not this central's): then ``fenced`` is set and this central sends nothing more."""
        if not _fenced(exc, producer) or self._still_leader():
            return False
        log.critical("another central took over (this producer was fenced)")
        self.fenced.set()
        return True

    def _still_leader(self) -> bool:
        """True when the lease stays held for 2 s (time for a lost one to be noticed)."""
        if self._leader is None:
            return False
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if not self._leader():
                return False
            time.sleep(0.1)
        log.warning("Kafka aborted a transaction of this central (it outlived its timeout); "
                    "starting again")
        return True

    def _end(self, producer: KafkaProducer, *, commit: bool) -> None:
        """Commit or abort, waiting at most ``timeout`` (kafka-python's own calls wait
        without a bound, and a broker restart can leave one waiting for good)."""
        manager = getattr(producer, "_transaction_manager", None)
        sender = getattr(producer, "_sender", None)
        if manager is None or sender is None:  # another kafka-python: its own calls
            producer.commit_transaction() if commit else producer.abort_transaction()
            return
        result = manager.begin_commit() if commit else manager.begin_abort()
        sender.wakeup()
        if not result.wait(timeout_ms=int(self.timeout * 1000)):
            raise KafkaTimeoutError(f"the transaction did not {'commit' if commit else 'abort'}"
                                    f" within {self.timeout:g} s")

    def _restart(self) -> None:
        """A failed transaction may leave the producer unusable: abort, or start anew
        (whose ``init_transactions`` aborts what this one left open)."""
        try:
            self._end(self._producer, commit=False)
            return
        except Exception as exc:  # noqa: BLE001 - any failure: a new producer
            # A new producer would fence whoever fenced this one: never while another
            # central holds the lease.
            if self._deposed(exc, self._producer):
                return
            log.warning("abort failed (%s): a new transactional producer", exc)
        _discard(self._producer, 0)
        while not self.fenced.is_set():
            try:
                self._producer = self._new_producer()
                return
            except BusError as exc:
                if self._deposed(exc):
                    return
                log.warning("cannot restart Kafka transactions yet: %s", exc)
                time.sleep(1.0)


_FENCED = (ProducerFencedError, InvalidProducerEpochError)


def _fenced(exc: BaseException | None, producer: KafkaProducer | None = None) -> bool:
    """Whether a failure means this producer was fenced (another holder of its
    ``transactional.id`` took over). kafka-python says so in several ways: the error
    itself, one it causes, one carried in its arguments ("Cannot perform send because
    at least one previous ... request has failed", ProducerFencedError()), or only in
    the producer's state ("in an error state: ... ProducerFencedError")."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _FENCED) or "fenced" in type(exc).__name__.lower():
            return True
        if any(isinstance(arg, _FENCED) for arg in exc.args):
            return True
        exc = exc.__cause__ or exc.__context__
    manager = getattr(producer, "_transaction_manager", None)
    return isinstance(getattr(manager, "last_error", None), _FENCED)


def _discard(producer: KafkaProducer, timeout: float) -> None:
    """Close a producer whatever state a failed transaction left it in. A close that
    raises leaves it open, and its ``__del__`` would close it again later and print the
    error as a traceback: it is marked closed here instead."""
    try:
        producer.close(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - a failed producer's close may raise anything
        log.debug("producer close: %s", exc)
        sender = getattr(producer, "_sender", None)
        if sender is not None and sender.is_alive():
            sender.force_close()
        producer._closed = True


class ChangelogReader:
    """Reads ``central_changelog`` (committed transactions only) as ("<table>/<key>",
    JSON or None) pairs: how a standby central follows the active one."""

    def __init__(self, bus: KafkaBus, changelog: str) -> None:
        self._tp = TopicPartition(bus.topic(changelog), 0)
        with kafka_errors(f"cannot read {self._tp.topic}", bus.bootstrap, bus.connect_timeout):
            self._consumer = KafkaConsumer(
                bootstrap_servers=bus.bootstrap, **_auth(bus.sasl),
                client_id=f"{bus.client_id}-changelog", group_id=None,
                enable_auto_commit=False, isolation_level="read_committed",
                fetch_max_wait_ms=200, max_partition_fetch_bytes=8 << 20,
                bootstrap_timeout_ms=int(bus.connect_timeout * 1000))
            self._consumer.assign([self._tp])
            self._consumer.seek_to_beginning(self._tp)

    def poll(self, timeout: float = 0.2) -> list[tuple[str, str | None]]:
        batches = _poll(self._consumer, timeout, "changelog poll")
        out: list[tuple[str, str | None]] = []
        for records in batches.values():
            for record in records:
                try:
                    key = record.key.decode("utf-8") if record.key else ""
                    value = record.value.decode("utf-8") if record.value is not None else None
                except UnicodeDecodeError:
                    log.warning("skipping a changelog record that is not UTF-8 (@%d)",
                                record.offset)
                    continue
                out.append((key, value))
        return out

    def behind(self) -> int:
        """Committed records not read yet (0: up to date)."""
        with kafka_errors("cannot read the changelog's end"):
            end = self._consumer.end_offsets([self._tp])[self._tp]
            return max(0, int(end) - self._consumer.position(self._tp))

    def read_to_end(self, stop: threading.Event | None = None,
                    timeout: float = 30.0) -> list[tuple[str, str | None]]:
        """Everything committed up to now (the end as of this call)."""
        with kafka_errors("cannot read the changelog's end"):
            end = int(self._consumer.end_offsets([self._tp])[self._tp])
        out: list[tuple[str, str | None]] = []
        deadline = time.monotonic() + timeout
        while self._consumer.position(self._tp) < end:
            if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
                raise BusError(f"cannot read {self._tp.topic} to its end "
                               f"(at {self._consumer.position(self._tp)} of {end})",
                               retriable=True)
            out += self.poll(0.2)
        return out

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False, timeout_ms=1000)
        except Exception as exc:  # noqa: BLE001 - closing must not raise at shutdown
            log.warning("changelog reader close: %s", exc)


T = TypeVar("T")


class Lease(ConsumerRebalanceListener):
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
        with kafka_errors(f"cannot join group {group}", bus.bootstrap, bus.connect_timeout):
            self._consumer = KafkaConsumer(
                bootstrap_servers=bus.bootstrap, client_id=f"{bus.client_id}-lease",
                **_auth(bus.sasl),
                group_id=group, group_instance_id=instance, enable_auto_commit=False,
                # the holder keeps its partition when another member joins: never moved
                # away from a live central by a newcomer
                partition_assignment_strategy=[CooperativeStickyAssignor],
                session_timeout_ms=int(session_timeout * 1000), heartbeat_interval_ms=1000,
                max_poll_interval_ms=max(10000, int(session_timeout * 2000)),
                # a lease topic created a moment ago may be missing from the first
                # metadata: the group is then assigned nothing, and only a metadata
                # refresh (5 min by default) brings the rebalance that assigns it
                metadata_max_age_ms=1000,
                bootstrap_timeout_ms=int(bus.connect_timeout * 1000))
            self._topic = bus.topic(topic)
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

    def run(self, stop: threading.Event) -> None:
        """Keep the membership alive (poll) until ``stop``; then leave the group."""
        stable_since = 0.0
        try:
            while not stop.is_set():
                try:
                    self._consumer.poll(timeout_ms=200)
                except KafkaError as exc:
                    log.warning("lease poll failed, retrying: %s", exc)
                    stop.wait(0.5)
                    continue
                if self.decided.is_set():
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
            bootstrap_servers=bootstrap, **_auth(sasl),
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


# ---------------------------------------------------------------------- a secure broker

ROLES = ("central", "engine", "driver", "viewer")


def _allow(topics: Iterable[str], *ops: str) -> list[tuple[str, str, str]]:
    return [("topic", t, op) for t in topics for op in ops]


def role_acls(prefix: str) -> dict[str, list[tuple[str, str, str]]]:
    """What each Kafka user may do: (resource type, name, operation). Kafka's ACLs are per
    topic, not per key: a driver may read every answer on control_topic; it cannot forge
    one (central signs them) nor write anything but requests."""
    from evc.protocol.topics import CHANGELOG, CONTROL, LEASE, NETWORK, REQUESTS, TELEMETRY

    t = {n: f"{prefix}{n}" for n in (REQUESTS, TELEMETRY, CONTROL, NETWORK, LEASE, CHANGELOG)}
    read = ("READ", "DESCRIBE")
    write = ("WRITE", "DESCRIBE")
    return {
        "central": _allow([t[REQUESTS], t[TELEMETRY], t[LEASE], t[NETWORK], t[CHANGELOG]],
                          *read)
        + _allow([t[CONTROL], t[NETWORK], t[CHANGELOG]], *write)
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

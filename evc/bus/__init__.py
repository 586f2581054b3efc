"""KafkaBus: the only module that imports kafka-python.

    with KafkaBus("10.0.0.2:9092", prefix="demo-") as bus:
        bus.ensure_topics()
        bus.send(REQUESTS, ChargeRequest(...), key="CP-01")
        consumer = bus.consumer([CONTROL], group_id=None)   # tail from the end
        consumer.run(handle, stop_event)                     # typed messages

Kafka errors surface as ``BusError`` with one readable line. Malformed records
are logged and skipped, never fatal. Group consumers commit only offsets that
their owner acknowledged (``Consumer.ack``), so a restarted process resumes
after the last message it actually applied.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from evc.errors import BusError, ProtocolError
from evc.protocol.messages import Message, from_wire

log = logging.getLogger(__name__)

REQUESTS = "requests_topic"
TELEMETRY = "telemetry_topic"
CONTROL = "control_topic"
ALL_TOPICS = (REQUESTS, TELEMETRY, CONTROL)

DEFAULT_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Delivery:
    """Where a consumed record came from; hand it back to ``Consumer.ack``."""

    topic: str
    partition: int
    offset: int


def encode(message: Message) -> bytes:
    return json.dumps(message.to_wire(), ensure_ascii=False, separators=(",", ":")).encode()


def decode(raw: bytes | None) -> Message:
    """Record value -> typed message; ProtocolError for anything malformed."""
    if raw is None:
        raise ProtocolError("record has no value")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("record is not UTF-8 JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("record is not a JSON object")
    return from_wire(obj)


def _unreachable(bootstrap: str, timeout: float) -> BusError:
    return BusError(
        f"cannot reach Kafka broker at {bootstrap} within {timeout:g} s "
        "(is it running? try `evc broker start`)",
        retriable=True,
    )


class KafkaBus:
    """A producer plus factories for admin work and consumers, for one process."""

    def __init__(
        self,
        bootstrap: str,
        *,
        prefix: str = "",
        client_id: str = "evc",
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.client_id = client_id
        self.connect_timeout = connect_timeout
        self._closed = False
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                client_id=client_id,
                acks="all",
                linger_ms=2,
                bootstrap_timeout_ms=int(connect_timeout * 1000),
            )
        except KafkaTimeoutError:
            raise _unreachable(bootstrap, connect_timeout) from None
        except (KafkaError, ValueError, OSError) as exc:
            raise BusError(f"cannot use Kafka broker at {bootstrap}: {exc}") from None

    # ------------------------------------------------------------------ topics
    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _admin(self) -> KafkaAdminClient:
        try:
            return KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id=f"{self.client_id}-admin",
                bootstrap_timeout_ms=int(self.connect_timeout * 1000),
            )
        except KafkaTimeoutError:
            raise _unreachable(self.bootstrap, self.connect_timeout) from None
        except (KafkaError, ValueError, OSError) as exc:
            raise BusError(f"cannot use Kafka broker at {self.bootstrap}: {exc}") from None

    def ensure_topics(self, names: Iterable[str] = ALL_TOPICS, partitions: int = 3) -> None:
        """Create the (prefixed) topics if missing and wait until they have leaders."""
        full = [self.topic(n) for n in names]
        admin = self._admin()
        try:
            spec = {t: {"num_partitions": partitions, "replication_factor": 1} for t in full}
            admin.create_topics(spec, raise_errors=False)
            admin.wait_for_topics(full, timeout_ms=int(self.connect_timeout * 1000))
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            raise BusError(f"cannot create topics {', '.join(full)}: {exc}") from None
        finally:
            admin.close()

    # ------------------------------------------------------------------ produce
    def send(self, topic: str, message: Message, key: str) -> None:
        """Queue ``message`` on ``topic`` (unprefixed name), keyed; never blocks on acks."""
        if self._closed:
            raise BusError("bus closed")
        try:
            future = self._producer.send(
                self.topic(topic), value=encode(message), key=key.encode("utf-8")
            )
        except KafkaError as exc:
            raise BusError(f"cannot send {message.TYPE} to {topic}: {exc}",
                           retriable=True) from None
        future.add_errback(self._on_send_error, message.TYPE, topic)

    def _on_send_error(self, kind: str, topic: str, exc: BaseException) -> None:
        log.error("Kafka did not take %s on %s: %s", kind, topic, exc)

    def flush(self, timeout: float = 5.0) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise BusError(f"flush failed: {exc}", retriable=True) from None

    # ------------------------------------------------------------------ consume
    def consumer(
        self,
        topics: Iterable[str],
        *,
        group_id: str | None = None,
        from_beginning: bool = False,
    ) -> Consumer:
        return Consumer(self, list(topics), group_id=group_id, from_beginning=from_beginning)

    # ------------------------------------------------------------------ lifecycle
    def close(self, timeout: float = 1.0) -> None:
        """Flush what is queued (bounded) and close the producer; safe twice.

        Consumers belong to the threads that run them and close themselves
        when their ``run`` ends (kafka-python consumers are not thread-safe).
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._producer.close(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - closing must not raise at shutdown
            log.warning("producer close: %s", exc)

    def __enter__(self) -> KafkaBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Consumer:
    """One kafka-python consumer, owned by the thread that calls ``run``.

    Without ``group_id`` it reads every partition of its topics from the end
    (or the beginning) and commits nothing: the way engines and drivers tail
    ``control_topic``. With ``group_id`` it joins the group, and commits the
    offsets that the owner acknowledged with ``ack`` (from any thread).
    """

    def __init__(
        self,
        bus: KafkaBus,
        topics: list[str],
        *,
        group_id: str | None,
        from_beginning: bool,
    ) -> None:
        self._bus = bus
        self.topics = [bus.topic(t) for t in topics]
        self.group_id = group_id
        self._acked: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._ack_lock = threading.Lock()
        self._closed = False
        self._close_lock = threading.Lock()
        self.ready = threading.Event()  # set once partitions are assigned and positioned
        self._last_refresh = 0.0
        timeout_ms = int(bus.connect_timeout * 1000)
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=bus.bootstrap,
                client_id=f"{bus.client_id}-consumer",
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest" if from_beginning else "latest",
                bootstrap_timeout_ms=timeout_ms,
                fetch_max_wait_ms=100,
                session_timeout_ms=10000,
                heartbeat_interval_ms=1000,
            )
            if group_id is None:
                self._assign_all(from_beginning)
            else:
                self._consumer.subscribe(self.topics)
        except KafkaTimeoutError:
            raise _unreachable(bus.bootstrap, bus.connect_timeout) from None
        except KafkaError as exc:
            raise BusError(f"cannot consume {', '.join(self.topics)}: {exc}") from None

    def _assign_all(self, from_beginning: bool) -> None:
        partitions: list[TopicPartition] = []
        deadline = time.monotonic() + self._bus.connect_timeout
        for topic in self.topics:
            while True:
                ids = self._consumer.partitions_for_topic(topic)
                if ids:
                    break
                if time.monotonic() > deadline:
                    raise BusError(f"topic {topic} does not exist (did central create it?)")
                time.sleep(0.1)
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        self._consumer.assign(partitions)
        if from_beginning:
            self._consumer.seek_to_beginning(*partitions)
        else:
            self._consumer.seek_to_end(*partitions)
        # Resolve positions now, so nothing produced after this call is missed.
        for tp in partitions:
            self._consumer.position(tp)
        self.ready.set()

    def _check_assignment(self) -> None:
        """Ready once the group gave us partitions of every subscribed topic.

        A group may first assign only the topics whose metadata the leader had
        (a topic created a moment ago); asking for fresh metadata makes the
        coordinator notice the rest and rejoin.
        """
        assigned = {tp.topic for tp in self._consumer.assignment()}
        if assigned >= set(self.topics):
            log.info("consumer group %s assigned %d partitions", self.group_id,
                     len(self._consumer.assignment()))
            self.ready.set()
            return
        now = time.monotonic()
        if assigned and now - self._last_refresh > 1.0:
            self._last_refresh = now
            missing = sorted(set(self.topics) - assigned)
            log.info("group %s has no partitions of %s yet: refreshing metadata",
                     self.group_id, ", ".join(missing))
            try:
                self._consumer.topics()  # a metadata request: the coordinator rejoins
            except KafkaError as exc:
                log.warning("metadata refresh failed: %s", exc)

    def ack(self, delivery: Delivery) -> None:
        """The owner applied this record: it may be committed."""
        tp = TopicPartition(delivery.topic, delivery.partition)
        with self._ack_lock:
            if delivery.offset + 1 > self._acked.get(tp, -1):
                self._acked[tp] = delivery.offset + 1

    def _commit_acked(self) -> None:
        if self.group_id is None:
            return
        with self._ack_lock:
            due = {tp: off for tp, off in self._acked.items() if self._committed.get(tp) != off}
        if not due:
            return
        try:
            self._consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in due.items()})
            self._committed.update(due)
        except KafkaError as exc:  # a rebalance in flight: the next round retries
            log.warning("offset commit failed, will retry: %s", exc)

    def poll(self, timeout: float = 0.2) -> list[tuple[Message, Delivery]]:
        """One poll: decoded messages; malformed records are logged and skipped."""
        self._commit_acked()
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout * 1000))
        except KafkaError as exc:
            log.warning("poll failed, retrying: %s", exc)
            return []
        if not self.ready.is_set():
            self._check_assignment()
        out: list[tuple[Message, Delivery]] = []
        for tp, records in batches.items():
            for record in records:
                delivery = Delivery(tp.topic, tp.partition, record.offset)
                try:
                    message = decode(record.value)
                except ProtocolError as exc:
                    log.warning(
                        "skipping malformed record %s[%d]@%d: %s",
                        tp.topic, tp.partition, record.offset, exc,
                    )
                    self.ack(delivery)
                    continue
                out.append((message, delivery))
        return out

    def run(
        self,
        handle: Callable[[Message, Delivery], Any],
        stop: threading.Event,
        poll_timeout: float = 0.2,
    ) -> None:
        """Poll until ``stop`` is set, handing every message to ``handle``; then close."""
        try:
            while not stop.is_set():
                for message, delivery in self.poll(poll_timeout):
                    handle(message, delivery)
            self._commit_acked()
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


def ping(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request within ``timeout``."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
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

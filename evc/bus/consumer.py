"""``Consumer``: one kafka-python consumer of assigned partitions, owned by one thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kafka import (
    KafkaConsumer,
    TopicPartition,
)
from kafka.errors import (
    KafkaError,
)
from kafka.structs import OffsetAndMetadata

from evc.bus.config import client_config
from evc.bus.errors import kafka_errors
from evc.bus.records import decode, partition_for
from evc.errors import ProtocolError
from evc.protocol.messages import Message, Removed
from evc.protocol.topics import Delivery

if TYPE_CHECKING:
    from evc.bus.client import KafkaBus

log = logging.getLogger(__name__)

Read = tuple[Message | None, Delivery, str]
"""A record as read: its message and delivery, or None and why it is malformed."""


GATHER_BYTES = 256 << 10  # a gathering fetch returns early once it holds this much
GATHER_FROM, GATHER_UNTIL = 50, 20  # records a second: a gathering consumer is busy
# How often acknowledged offsets go to the group. They are a fallback and a gauge of the
# lag (central starts from the offsets in its own store): one OffsetCommit request a
# poll was ~35 a second under load, each as costly in kafka-python as a fetch.
COMMIT_EVERY = 1.0

def poll_once(consumer: KafkaConsumer, timeout: float, what: str) -> dict[Any, list[Any]]:
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
        self._commit_due = 0.0  # monotonic: when acknowledged offsets go to the group next
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
                bootstrap_servers=bus.bootstrap, **client_config(bus.sasl),
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
        self.ack_all([delivery])

    def ack_all(self, deliveries: list[Delivery]) -> None:
        """``ack`` for each of ``deliveries``, taking the lock once."""
        with self._ack_lock:
            for delivery in deliveries:
                tp = TopicPartition(delivery.topic, delivery.partition)
                if delivery.offset + 1 > self._acked.get(tp, -1):
                    self._acked[tp] = delivery.offset + 1

    def _commit_acked(self, wait: bool = False) -> None:
        """Commit what the owner acknowledged. Between polls without waiting for the
        broker (a synchronous commit per poll held every fetch back by a round trip), at
        most every COMMIT_EVERY; ``wait`` at the end of ``run``."""
        if self.group_id is None:
            return
        if not wait:
            now = time.monotonic()
            if now < self._commit_due:
                return
            self._commit_due = now + COMMIT_EVERY
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
        out: list[tuple[Message, Delivery]] = []
        for message, delivery, error in self.read(timeout):
            if message is not None:
                out.append((message, delivery))
            elif on_skip is not None:
                on_skip(delivery, error)
        return out

    def read(self, timeout: float = 0.2) -> list[Read]:
        """One poll, every record in the order read (a partition's in its offsets' order):
        (message, delivery, "") or, for a malformed record (logged), (None, delivery,
        why)."""
        self._commit_acked()
        try:
            self._apply_retarget()
        except KafkaError as exc:
            log.warning("cannot reassign partitions yet: %s", exc)
        batches = poll_once(self._consumer, timeout, "poll")
        out: list[Read] = []
        for tp, records in batches.items():
            for record in records:
                delivery = Delivery(tp.topic, tp.partition, record.offset,
                                    (record.timestamp or 0) / 1000.0)
                if record.value is None and record.key:  # a tombstone: the key is gone
                    try:
                        out.append((Removed(key=record.key.decode("utf-8")), delivery, ""))
                    except (UnicodeDecodeError, ProtocolError):
                        pass
                    continue
                try:
                    message = decode(record.value, delivery)
                except ProtocolError as exc:
                    log.warning("skipping malformed record %s[%d]@%d: %s",
                                tp.topic, tp.partition, record.offset, exc)
                    out.append((None, delivery, str(exc)))
                    continue
                out.append((message, delivery, ""))
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
        """Poll until ``stop`` is set, handing every message to ``handle`` (and every
        malformed record to ``on_skip``) in the order read; then close."""
        def each(reads: list[Read]) -> None:
            for message, delivery, error in reads:
                if message is not None:
                    handle(message, delivery)
                elif on_skip is not None:
                    on_skip(delivery, error)

        self.run_batches(each, stop, poll_timeout)

    def run_batches(self, handle: Callable[[list[Read]], Any], stop: threading.Event,
                    poll_timeout: float = 0.2) -> None:
        """Poll until ``stop`` is set, handing what each poll read (``read``), when it
        read anything, to ``handle`` at once; then close."""
        try:
            while not stop.is_set():
                reads = self.read(poll_timeout)
                if reads:
                    handle(reads)
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


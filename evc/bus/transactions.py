"""``Transactions``: the active central's transactional producer."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from kafka import (
    KafkaProducer,
)
from kafka.errors import (
    KafkaError,
    KafkaTimeoutError,
)

from evc.bus.config import client_config
from evc.bus.errors import fenced, kafka_errors
from evc.bus.records import encode
from evc.errors import BusError
from evc.ports import Done
from evc.protocol.messages import Message

if TYPE_CHECKING:
    from evc.bus.client import KafkaBus

log = logging.getLogger(__name__)


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
                 timeout: float = 10.0, leader: Callable[[], bool] | None = None,
                 producer_factory: Callable[[], KafkaProducer] | None = None) -> None:
        self._bus = bus
        # How a producer is made (its ``init_transactions`` is called here): kafka-python's,
        # or a test's stand-in for the fencing and retry paths.
        self._make_producer = producer_factory or self._kafka_producer
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

    def _kafka_producer(self) -> KafkaProducer:
        bus = self._bus
        return KafkaProducer(
            bootstrap_servers=bus.bootstrap, **client_config(bus.sasl),
            client_id=f"{bus.client_id}-txn", transactional_id=self.transactional_id,
            enable_idempotence=True, acks="all", linger_ms=0,
            # the broker answers "concurrent transactions" for a few ms after each
            # commit: retry soon, not after the 100 ms default
            retry_backoff_ms=5, max_block_ms=int(self.timeout * 1000),
            transaction_timeout_ms=int(self.timeout * 1000),
            bootstrap_timeout_ms=int(bus.connect_timeout * 1000))

    def _new_producer(self) -> KafkaProducer:
        bus = self._bus
        with kafka_errors("cannot start Kafka transactions", bus.bootstrap, bus.connect_timeout,
                          bus.sasl.user if bus.sasl else ""):
            producer = self._make_producer()
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
                raise BusError("transactions closed", retriable=True)
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
                    on_done(BusError("central stopped", retriable=True))
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
                on_done(None)
        return True

    def _deposed(self, exc: BaseException, producer: KafkaProducer | None = None) -> bool:
        """Whether ``exc`` says another central took over (fenced, and the lease is
        not this central's): then ``fenced`` is set and this central sends nothing more."""
        if not fenced(exc, producer) or self._still_leader():
            return False
        log.critical("another central took over (this producer was fenced)")
        self.fenced.set()
        return True

    LEADER_GRACE = 2.0  # s the lease must stay held after a "fenced" for it to be Kafka's

    def _still_leader(self) -> bool:
        """True when the lease stays held for LEADER_GRACE (time for a lost one to be
        noticed)."""
        if self._leader is None:
            return False
        deadline = time.monotonic() + self.LEADER_GRACE
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


"""The bus's pure parts: how a gathering consumer adapts its fetches to its traffic, how a
fenced producer is recognised however kafka-python reports it, and how Transactions
commits, retries and steps down (with a stand-in producer)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from kafka.errors import KafkaError, KafkaTimeoutError, ProducerFencedError
from kafka.protocol.consumer.metadata import ConsumerProtocolSubscription

from evc.bus import GATHER_BYTES, Consumer, Lease, Transactions, fenced
from evc.bus.lease import _WatchedAssignor
from evc.errors import BusError
from evc.protocol import messages as m
from evc.protocol.topics import CHANGELOG, CONTROL
from tests.helpers import wait_for


def gathering(gather: float = 0.02) -> Consumer:
    consumer = Consumer.__new__(Consumer)  # no broker: only the adapting state
    consumer._gather, consumer._gathering = gather, False
    consumer._window = (time.monotonic(), 0)
    consumer._consumer = SimpleNamespace(_fetcher=SimpleNamespace(
        config={"fetch_max_wait_ms": 500, "fetch_min_bytes": 1}))
    return consumer


def one_second(consumer: Consumer, records: int) -> dict:
    since, _ = consumer._window
    consumer._window = (since - 1.0, records)  # a second has passed with these records
    consumer._adapt(0)
    return consumer._consumer._fetcher.config


def test_a_busy_consumer_gathers_and_an_idle_one_answers_at_once():
    consumer = gathering()
    assert one_second(consumer, 10) == {"fetch_max_wait_ms": 500, "fetch_min_bytes": 1}
    assert one_second(consumer, 600) == {"fetch_max_wait_ms": 20,
                                         "fetch_min_bytes": GATHER_BYTES}
    assert one_second(consumer, 30)["fetch_max_wait_ms"] == 20  # not idle yet: hysteresis
    assert one_second(consumer, 5) == {"fetch_max_wait_ms": 500, "fetch_min_bytes": 1}
    consumer._adapt(1000)  # within the second: counted, nothing decided yet
    assert consumer._consumer._fetcher.config["fetch_max_wait_ms"] == 500


def test_a_fenced_producer_is_recognised_however_kafka_python_says_it():
    assert fenced(ProducerFencedError())
    # a send after the fencing: a plain KafkaError carrying the cause in its arguments
    assert fenced(KafkaError("Cannot perform send because at least one previous "
                              "transactional or idempotent request has failed with errors.",
                              ProducerFencedError()))
    # an abort after it: only the producer's state says why
    producer = SimpleNamespace(_transaction_manager=SimpleNamespace(
        last_error=ProducerFencedError()))
    assert fenced(KafkaError("Cannot execute transactional method because we are in an "
                              "error state"), producer)
    try:
        try:
            raise ProducerFencedError()
        except ProducerFencedError as cause:
            raise RuntimeError("cannot start Kafka transactions") from cause
    except RuntimeError as wrapped:
        assert fenced(wrapped)
    # a broker outage is not a fencing: the transaction is tried again
    assert not fenced(KafkaTimeoutError("the transaction did not commit within 10 s"))
    assert not fenced(KafkaError("timed out"), SimpleNamespace(
        _transaction_manager=SimpleNamespace(last_error=None)))


# ---------------------------------------------------------------------- Transactions


class FakeProducer:
    """kafka-python's transactional producer as Transactions uses it (no broker): what it
    was sent, per transaction; ``fail`` holds the errors its next commits raise."""

    def __init__(self, fail: list[BaseException] | None = None,
                 abort_fails: bool = False) -> None:
        self.fail = fail if fail is not None else []
        self.abort_fails = abort_fails
        self.open: list[tuple[str, bytes | None, bytes | None, int | None]] | None = None
        self.committed: list[list[tuple[str, bytes | None, bytes | None, int | None]]] = []
        self.aborted = 0
        self.closed = False

    def init_transactions(self) -> None:
        pass

    def begin_transaction(self) -> None:
        self.open = []

    def send(self, topic, value=None, key=None, partition=None):
        assert self.open is not None, "a send outside a transaction"
        self.open.append((topic, key, value, partition))

    def commit_transaction(self) -> None:
        if self.fail:
            raise self.fail.pop(0)
        assert self.open is not None
        self.committed.append(self.open)
        self.open = None

    def abort_transaction(self) -> None:
        if self.abort_fails:
            raise KafkaError("the abort failed too")
        self.aborted += 1
        self.open = None

    def close(self, timeout=None) -> None:
        self.closed = True


def fake_bus() -> SimpleNamespace:
    return SimpleNamespace(topic=lambda name: f"p-{name}", partition_of=lambda _t, _k: 0,
                           bootstrap="127.0.0.1:1", connect_timeout=1.0, sasl=None,
                           client_id="evc-test")


def transactions(producers: list[FakeProducer], leader=None) -> Transactions:
    made = iter(producers)
    return Transactions(fake_bus(), "evc-central", CHANGELOG, leader=leader,
                        producer_factory=lambda: next(made))


def run_until(txn: Transactions, done: Callable[[], object]) -> None:
    """The committer's thread, until ``done()`` (within 5 s), then stopped."""
    stop = threading.Event()
    thread = threading.Thread(target=txn.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(done, 5, "the transactions' verdicts", interval=0.01)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_a_batch_is_one_transaction_changes_first_and_each_message_confirmed_once():
    producer = FakeProducer()
    txn = transactions([producer])
    verdicts: list = []
    with txn.batch():
        txn.replicate([("cps/CP-01", '{"cp_id":"CP-01"}'), ("cps/CP-02", None)])
        txn.send(CONTROL, m.StopCP(cp_id="CP-01"), "CP-01", verdicts.append)
        txn.replicate([("cps/CP-01", '{"cp_id":"CP-01","stopped":true}')])  # newest wins
    run_until(txn, lambda: verdicts)
    (batch,) = producer.committed
    assert [(t, k) for t, k, _, _ in batch] == [
        ("p-" + CHANGELOG, b"cps/CP-02"), ("p-" + CHANGELOG, b"cps/CP-01"),
        ("p-control_topic", b"CP-01")]
    assert batch[1][2] == b'{"cp_id":"CP-01","stopped":true}' and batch[0][2] is None
    assert verdicts == [None] and txn.committed == 1 and producer.closed


def test_a_failed_commit_is_tried_again_whole_and_its_messages_wait():
    producer = FakeProducer(fail=[KafkaError("broker away")])
    txn = transactions([producer])
    verdicts: list = []
    txn.send(CONTROL, m.StopCP(cp_id="CP-01"), "CP-01", verdicts.append)
    run_until(txn, lambda: verdicts)
    assert producer.aborted == 1 and len(producer.committed) == 1
    assert verdicts == [None]  # no failure reported for a transaction that was retried


def test_a_fenced_central_steps_down_and_its_messages_are_not_sent():
    producer = FakeProducer(fail=[ProducerFencedError()])
    txn = transactions([producer], leader=lambda: False)  # another central holds the lease
    verdicts: list = []
    txn.send(CONTROL, m.StopCP(cp_id="CP-01"), "CP-01", verdicts.append)
    run_until(txn, lambda: txn.fenced.is_set() and verdicts)
    assert txn.fenced.is_set() and not producer.committed
    (error,) = verdicts
    assert isinstance(error, BusError) and error.retriable  # stored: a restart sends it
    with pytest.raises(BusError, match="closed"):
        txn.send(CONTROL, m.StopCP(cp_id="CP-01"), "CP-01")


def test_fenced_while_the_lease_is_held_starts_a_new_producer():
    """Kafka aborts a transaction that outlived its timeout (a broker outage): not another
    central. The lease still held, the producer starts again and the batch goes."""
    first, second = FakeProducer(fail=[ProducerFencedError()], abort_fails=True), \
        FakeProducer()
    txn = transactions([first, second], leader=lambda: True)
    txn.LEADER_GRACE = 0.1
    verdicts: list = []
    txn.send(CONTROL, m.StopCP(cp_id="CP-01"), "CP-01", verdicts.append)
    run_until(txn, lambda: verdicts)
    assert not txn.fenced.is_set() and first.closed and len(second.committed) == 1
    assert verdicts == [None]


# ---------------------------------------------------------------------- Lease


def lease_member(member_id: str, topic: str) -> SimpleNamespace:
    return SimpleNamespace(member_id=member_id, metadata=ConsumerProtocolSubscription(
        version=1, topics=[topic], user_data=b"", owned_partitions=[]))


def test_an_assignment_made_blind_to_the_lease_partition_is_noticed_and_joined_again():
    """kafka-python's leader, its metadata still without the new lease topic, gives the
    lease to nobody (seen in CI: a lone central waited as a standby for a holder that
    did not exist). The lease notices and has the group join again once it is known."""
    topic = "t-central_lease"
    assignor = _WatchedAssignor(topic)
    blind = SimpleNamespace(partitions_for_topic=lambda _t: None, topics=lambda *_: [topic])
    out = assignor.assign(blind, [lease_member("m1", topic)])
    assert out["m1"].assigned_partitions == [] and assignor.blind.is_set()
    seeing = SimpleNamespace(partitions_for_topic=lambda _t: {0}, topics=lambda *_: [topic])
    watched = _WatchedAssignor(topic)
    out = watched.assign(seeing, [lease_member("m1", topic), lease_member("m2", topic)])
    assert sorted(len(a.assigned_partitions) for a in out.values()) == [0, 1]
    assert not watched.blind.is_set()

    rejoins: list[bool] = []
    lease = Lease.__new__(Lease)  # no broker: only the decision to join again
    lease._topic, lease._assignor = topic, assignor
    known: dict[str, set[int] | None] = {topic: None}
    lease._consumer = SimpleNamespace(
        partitions_for_topic=lambda t: known[t],
        _coordinator=SimpleNamespace(request_rejoin=lambda: rejoins.append(True)))
    lease._known_since = 0.0
    assert not lease._rejoin_if_blind(now=10.0) and not rejoins  # not known yet
    known[topic] = {0}
    assert not lease._rejoin_if_blind(now=11.0)  # known: kafka-python may rebalance itself
    assert lease._rejoin_if_blind(now=12.6) and rejoins == [True]  # it did not: again
    assert not lease._rejoin_if_blind(now=20.0) and rejoins == [True]  # once per blind one
    assignor.assign(blind, [lease_member("m1", topic)])
    assignor.assign(seeing, [lease_member("m1", topic)])  # it rebalanced by itself
    assert not assignor.blind.is_set()
    assert not lease._rejoin_if_blind(now=30.0) and rejoins == [True]

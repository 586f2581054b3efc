"""KafkaBus against the real broker."""

import threading
import time

import pytest

from evc.bus import KafkaBus, encode
from evc.errors import BusError
from evc.protocol import messages as m
from evc.protocol.topics import CONTROL, REQUESTS, TELEMETRY
from tests.helpers import free_port, wait_for


def collect(consumer, n, timeout=15.0):
    got = []

    def more():
        got.extend(consumer.poll(0.2))
        return len(got) >= n

    wait_for(more, timeout, f"{n} messages")
    return got


def test_typed_round_trip(bus):
    consumer = bus.consumer([REQUESTS, TELEMETRY, CONTROL])
    sent = [
        (REQUESTS, m.ChargeRequest(driver_id="D-1", cp_id="CP-01"), "CP-01"),
        (TELEMETRY, m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=1.5,
                                importe_eur=0.5), "CP-01"),
        (CONTROL, m.Ticket(driver_id="D-1", cp_id="CP-01", session_id="s", consumo_kwh=1.5,
                           importe_eur=0.5, price_eur_kwh=0.33, started_at=1.0, ended_at=2.0,
                           reason=m.EndReason.FINISHED), "D-1"),
    ]
    for topic, msg, key in sent:
        bus.send(topic, msg, key)
    bus.flush()
    got = collect(consumer, 3)
    consumer.close()
    assert sorted((msg for msg, _ in got), key=lambda x: x.TYPE) == sorted(
        (msg for _, msg, _ in sent), key=lambda x: x.TYPE)
    assert {d.topic for _, d in got} == {bus.topic(t) for t in (REQUESTS, TELEMETRY, CONTROL)}


def test_raw_seed_keys_on_the_wire(bus, kafka):
    from kafka import KafkaConsumer
    raw = KafkaConsumer(bus.topic(REQUESTS), bootstrap_servers=kafka,
                        auto_offset_reset="earliest", consumer_timeout_ms=10000)
    bus.send(REQUESTS, m.ChargeRequest(driver_id="D-23", cp_id="CP-01"), "CP-01")
    bus.flush()
    import json
    record = next(iter(raw))
    raw.close()
    body = json.loads(record.value)
    assert body["driver_id"] == "D-23" and body["cp_id_solicitado"] == "CP-01"
    assert record.key == b"CP-01"


def test_malformed_records_are_skipped_in_their_place(bus, kafka, caplog):
    """Each malformed record is logged and handed to ``on_skip`` where it was read, between
    the messages around it: a reader that counts offsets (central) must see a partition's
    records in its order."""
    from kafka import KafkaProducer
    consumer = bus.consumer([REQUESTS])
    raw = KafkaProducer(bootstrap_servers=kafka)
    topic = bus.topic(REQUESTS)
    for junk in [b"\xff\xfe", b"not json", b"[1]", b'{"type": "nope"}',
                 b'{"type": "charge_request", "driver_id": 5}']:
        raw.send(topic, key=b"CP-01", value=junk, partition=0)
        raw.send(topic, key=b"CP-01", partition=0,
                 value=encode(m.ChargeRequest(driver_id="D-1", cp_id="CP-01")))
    raw.flush()
    raw.close()
    seen: list[tuple[str, int]] = []
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(
        lambda msg, d: seen.append((msg.TYPE, d.offset)), stop, 0.2,
        lambda d, why: seen.append(("skipped", d.offset))))
    thread.start()
    try:
        wait_for(lambda: len(seen) >= 10, 15, "ten records")
    finally:
        stop.set()
        thread.join(5)
    assert [kind for kind, _ in seen] == ["skipped", "charge_request"] * 5
    assert [offset for _, offset in seen] == sorted(offset for _, offset in seen)
    assert caplog.text.count("skipping malformed record") == 5


def test_group_resumes_after_the_last_acknowledged_message(bus):
    group = f"{bus.prefix}group"
    for i in range(6):
        bus.send(REQUESTS, m.Heartbeat(cp_id=f"n{i}"), "same-key")  # one partition, in order
    bus.flush()
    first = bus.consumer([REQUESTS], group_id=group, from_beginning=True)
    got = collect(first, 6, timeout=30)
    assert [x.cp_id for x, _ in got] == [f"n{i}" for i in range(6)]
    for _msg, delivery in got[:4]:
        first.ack(delivery)  # applied four, crashed before the rest
    stop = threading.Event()
    stop.set()
    first.run(lambda *_: None, stop)  # commits acknowledged offsets and closes
    assert bus.group_lag(group, [REQUESTS]) == 2  # the gauge: two records not yet applied
    second = bus.consumer([REQUESTS], group_id=group, from_beginning=True)
    rest = collect(second, 2, timeout=30)
    second.close()
    assert [x.cp_id for x, _ in rest] == ["n4", "n5"]


def test_run_stops_promptly(bus):
    consumer = bus.consumer([CONTROL])
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(lambda *_: None, stop))
    thread.start()
    time.sleep(0.3)  # let it block in poll: stopping must still be prompt
    stop.set()
    thread.join(5)
    assert not thread.is_alive()  # stopped (how fast: benchmarks/stops.py)


def test_unreachable_broker_is_a_clear_error():
    port = free_port()  # nothing listens there
    with pytest.raises(BusError, match=f"cannot reach Kafka broker at 127.0.0.1:{port} within 2 s"):
        KafkaBus(f"127.0.0.1:{port}", connect_timeout=2)


def test_send_after_close(bus):
    bus.close()
    with pytest.raises(BusError, match="bus closed"):
        bus.send(REQUESTS, m.Heartbeat(cp_id="a"), "a")
    bus.close()  # idempotent


def test_a_batch_is_one_transaction_with_its_messages(bus):
    """What the brain queues in one batch (its stored changes, the messages they decided)
    is committed whole: a changelog reader never sees the state without its messages."""
    from evc.bus import ChangelogReader, Transactions
    from evc.protocol.topics import CHANGELOG

    txn = Transactions(bus, f"{bus.prefix}txn-test", CHANGELOG)
    stop = threading.Event()
    thread = threading.Thread(target=txn.run, args=(stop,))
    thread.start()
    done = threading.Event()
    try:
        with txn.batch():
            txn.replicate([("cps/CP-01", '{"cp_id":"CP-01"}')])
            time.sleep(0.5)  # a slow batch: the committer is free to look meanwhile
            txn.send(CONTROL, m.StopCP(cp_id="CP-01"), "CP-01",
                     lambda error: error is None and done.set())
        wait_for(done.is_set, 15, "the batch committed")
        assert txn.committed == 1  # one transaction, not the changes first
        reader = ChangelogReader(bus, CHANGELOG)
        assert reader.read_to_end() == [("cps/CP-01", '{"cp_id":"CP-01"}')]
        reader.close()
    finally:
        stop.set()
        thread.join(5)


def test_a_lease_on_a_topic_just_created_is_held_by_its_only_member(bus):
    """The lease's topic created by the very first look at it (its first metadata has no
    partition yet): the group's first assignment is then empty, and the only member must
    still get the lease at once, not be taken for a standby."""
    from evc.bus import Lease

    stop = threading.Event()
    lease = Lease(bus, f"lease-new-{free_port()}", f"{bus.prefix}lease-group", "only-one",
                  session_timeout=3.0)
    thread = threading.Thread(target=lease.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: lease.held.is_set() or lease.decided.is_set(), 20,
                 "the coordinator's answer")
        assert lease.held.wait(3.0), "the only member was told another one holds the lease"
    finally:
        stop.set()
        thread.join(5)

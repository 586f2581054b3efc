"""The bus's pure parts: how a gathering consumer adapts its fetches to its traffic, and
how a fenced producer is recognised however kafka-python reports it."""

from __future__ import annotations

import time
from types import SimpleNamespace

from kafka.errors import KafkaError, KafkaTimeoutError, ProducerFencedError

from evc.bus import GATHER_BYTES, Consumer, fenced


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

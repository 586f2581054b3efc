"""The bus's pure parts: how a gathering consumer adapts its fetches to its traffic."""

from __future__ import annotations

import time
from types import SimpleNamespace

from evc.bus import GATHER_BYTES, Consumer


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

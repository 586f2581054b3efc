"""``ChangelogReader``: how a standby central (and any read model) follows central's state."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from kafka import (
    KafkaConsumer,
    TopicPartition,
)

from evc.bus.config import client_config
from evc.bus.consumer import GATHER_BYTES, poll_once
from evc.bus.errors import kafka_errors
from evc.errors import BusError

if TYPE_CHECKING:
    from evc.bus.client import KafkaBus

log = logging.getLogger(__name__)


class ChangelogReader:
    """Reads ``central_changelog`` (committed transactions only) as ("<table>/<key>",
    JSON or None) pairs: how a standby central follows the active one."""

    def __init__(self, bus: KafkaBus, changelog: str, gather: float = 0.0) -> None:
        """``gather`` (seconds): a reader that needs no record at once (evc web) lets the
        broker collect records that long per fetch (kafka-python's cost is per fetch)."""
        self._tp = TopicPartition(bus.topic(changelog), 0)
        with kafka_errors(f"cannot read {self._tp.topic}", bus.bootstrap, bus.connect_timeout):
            self._consumer = KafkaConsumer(
                bootstrap_servers=bus.bootstrap, **client_config(bus.sasl),
                client_id=f"{bus.client_id}-changelog", group_id=None,
                enable_auto_commit=False, isolation_level="read_committed",
                fetch_max_wait_ms=int(gather * 1000) if gather else 200,
                fetch_min_bytes=GATHER_BYTES if gather else 1,
                max_partition_fetch_bytes=8 << 20,
                bootstrap_timeout_ms=int(bus.connect_timeout * 1000))
            self._consumer.assign([self._tp])
            self._consumer.seek_to_beginning(self._tp)

    def poll(self, timeout: float = 0.2) -> list[tuple[str, str | None]]:
        batches = poll_once(self._consumer, timeout, "changelog poll")
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
            return max(0, int(end) - int(self._consumer.position(self._tp)))

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


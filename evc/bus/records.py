"""Record values and keys: typed messages as UTF-8 JSON, and the partition of a key."""

from __future__ import annotations

import functools
import json

from kafka.partitioner.default import murmur2

from evc.errors import ProtocolError
from evc.protocol.messages import Message, from_record
from evc.protocol.topics import Delivery


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
    return int(murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


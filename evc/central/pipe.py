"""What central and its TCP process say to each other over their socket pair (pickled,
length-prefixed: each other's, nobody else's). A module of its own so that both sides
name the same classes (the child runs server.py as ``__main__``).

Central -> its child: Alive, Stop, SendFrame, CloseConnection. The child -> central: the
events for the brain (events.py), and ChildLog.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from typing import Any

from evc.central.events import Event
from evc.protocol.messages import Message


@dataclass(frozen=True)
class Alive:
    """Central is there (sent every ALIVE_EVERY s)."""


@dataclass(frozen=True)
class Stop:
    """Close every connection and end."""


@dataclass(frozen=True)
class SendFrame:
    conn_id: int
    message: Message


@dataclass(frozen=True)
class CloseConnection:
    """Send ``final`` (if any), then close ``conn_id``."""

    conn_id: int
    reason: str
    final: Message | None = None


@dataclass(frozen=True)
class ChildLog:
    """A log record of the child's, for central's log."""

    name: str
    level: int
    text: str


ToChild = Alive | Stop | SendFrame | CloseConnection
FromChild = Event | ChildLog


_LEN = struct.Struct(">I")


def pack(obj: ToChild | FromChild) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


class Unpacker:
    """Length-prefixed pickles out of a byte stream, as they complete."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out = []
        while len(self._buf) >= _LEN.size:
            (length,) = _LEN.unpack_from(self._buf)
            if len(self._buf) < _LEN.size + length:
                break
            out.append(pickle.loads(self._buf[_LEN.size:_LEN.size + length]))
            del self._buf[:_LEN.size + length]
        return out

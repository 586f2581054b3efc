"""Length-prefixed JSON frames, the TCP format between monitor, central and engine.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of
UTF-8 JSON holding one object with a string ``type``. Every malformed input
(EOF mid-frame, a length over MAX_FRAME, bad UTF-8, not JSON, not an object, no
``type``) raises ``ProtocolError`` and nothing else.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

from evc.errors import ProtocolError

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024


def encode_payload(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_payload(payload: bytes) -> dict[str, Any]:
    """UTF-8 JSON bytes -> dict with a string ``type``; ProtocolError otherwise."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"frame is not UTF-8 ({exc.reason})") from exc
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ProtocolError("frame is not JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame is a JSON {type(obj).__name__}, not an object")
    if not isinstance(obj.get("type"), str):
        raise ProtocolError("frame has no string 'type'")
    return obj


def encode_frame(obj: dict[str, Any]) -> bytes:
    payload = encode_payload(obj)
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(payload)) + payload


def _check_length(length: int) -> None:
    if length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} exceeds the {MAX_FRAME}-byte limit")


class FrameDecoder:
    """Incremental decoder for non-blocking sockets: ``feed`` bytes, get objects."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        frames: list[dict[str, Any]] = []
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            _check_length(length)
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[HEADER.size:end])
            del self._buffer[:end]
            frames.append(decode_payload(payload))
        return frames

    def close(self) -> None:
        """The stream ended: a partial frame left behind is an error."""
        if self._buffer:
            raise ProtocolError(f"connection closed mid-frame ({len(self._buffer)} bytes pending)")


def _recv_exactly(sock: socket.socket, n: int, *, at_boundary: bool) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            if at_boundary and not chunks:
                return None
            raise ProtocolError(f"connection closed mid-frame ({len(chunks)} of {n} bytes)")
        chunks += chunk
    return bytes(chunks)


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """Read one frame from a blocking socket; None on a clean EOF between frames.

    Socket timeouts and OSErrors propagate unchanged; malformed data raises
    ProtocolError.
    """
    header = _recv_exactly(sock, HEADER.size, at_boundary=True)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    _check_length(length)
    payload = _recv_exactly(sock, length, at_boundary=False)
    assert payload is not None
    return decode_payload(payload)


def send_frame(sock: socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(encode_frame(obj))


def read_frames(sock: socket.socket, stop: threading.Event, poll: float = 0.5,
                idle: float | None = None) -> Iterator[dict[str, Any]]:
    """Frames from a blocking socket until EOF or ``stop``, checking ``stop`` every ``poll`` s.

    Reads through a FrameDecoder, so a timeout in the middle of a frame loses
    nothing. EOF mid-frame and malformed frames raise ProtocolError; socket
    errors propagate; no whole frame for ``idle`` seconds raises TimeoutError.
    """
    decoder = FrameDecoder()
    sock.settimeout(poll)
    last = time.monotonic()
    while not stop.is_set():
        if idle is not None and time.monotonic() - last > idle:
            raise TimeoutError(f"no frame for {idle:g} s")
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            decoder.close()
            return
        frames = decoder.feed(data)
        if frames:
            last = time.monotonic()
        yield from frames

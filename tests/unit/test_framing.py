import json
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evc.errors import ProtocolError
from evc.protocol.framing import (
    MAX_FRAME,
    FrameDecoder,
    encode_frame,
    recv_frame,
    send_frame,
)


def frame_of(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def test_round_trip_over_a_socket():
    a, b = socket.socketpair()
    with a, b:
        send_frame(a, {"type": "register", "cp_id": "CP-01", "location": "C/Italia 5 ñ"})
        send_frame(a, {"type": "heartbeat", "cp_id": "CP-01"})
        a.shutdown(socket.SHUT_WR)
        assert recv_frame(b) == {"type": "register", "cp_id": "CP-01", "location": "C/Italia 5 ñ"}
        assert recv_frame(b)["type"] == "heartbeat"
        assert recv_frame(b) is None  # clean EOF between frames


def test_decoder_handles_frames_split_anywhere():
    data = encode_frame({"type": "a", "n": 1}) + encode_frame({"type": "b", "n": 2})
    for cut in range(len(data) + 1):
        dec = FrameDecoder()
        out = dec.feed(data[:cut]) + dec.feed(data[cut:])
        assert [f["type"] for f in out] == ["a", "b"]
        dec.close()


@pytest.mark.parametrize(
    "raw, message",
    [
        (struct.pack(">I", 0xFFFFFFFF), "exceeds"),
        (struct.pack(">I", MAX_FRAME + 1), "exceeds"),
        (frame_of(b"\xff\xfe"), "UTF-8"),
        (frame_of(b"not json"), "not JSON"),
        (frame_of(b"[1,2]"), "not an object"),
        (frame_of(b'{"no_type": 1}'), "type"),
        (frame_of(b'{"type": 7}'), "type"),
        (frame_of(b"1" * 5000), "not JSON"),  # int over Python's digit limit
        (frame_of(b"[" * 60000), "not JSON"),  # nesting deeper than the recursion limit
    ],
)
def test_every_malformed_input_is_a_protocol_error(raw, message):
    with pytest.raises(ProtocolError, match=message):
        FrameDecoder().feed(raw)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(raw[:8 + 200000])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError):
            recv_frame(b)


def test_eof_mid_frame():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(encode_frame({"type": "x"})[:-2])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError, match="mid-frame"):
            recv_frame(b)
    dec = FrameDecoder()
    dec.feed(b"\x00\x00")
    with pytest.raises(ProtocolError, match="mid-frame"):
        dec.close()


def test_oversized_outgoing_frame_is_refused():
    with pytest.raises(ProtocolError):
        encode_frame({"type": "x", "blob": "a" * MAX_FRAME})


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_protocol_error(data):
    dec = FrameDecoder()
    try:
        for frame in dec.feed(data):
            assert isinstance(frame, dict) and isinstance(frame["type"], str)
        dec.close()
    except ProtocolError:
        pass
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)  # a hang would show up as socket.timeout, which is not caught
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        try:
            while recv_frame(b) is not None:
                pass
        except ProtocolError:
            pass


@settings(max_examples=120, deadline=None)
@given(st.dictionaries(st.text(max_size=10), st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10)), st.text(min_size=1, max_size=20))
def test_any_object_round_trips(body, kind):
    obj = dict(body, type=kind)
    assert FrameDecoder().feed(encode_frame(obj)) == [json.loads(json.dumps(obj))]


def test_read_frames_survives_a_pause_inside_a_frame():
    import threading

    from evc.protocol.framing import read_frames

    a, b = socket.socketpair()
    data = encode_frame({"type": "heartbeat", "cp_id": "CP-01"})
    stop = threading.Event()
    sent = threading.Event()

    def slow_sender():
        a.sendall(data[:7])
        sent.wait(0.3)  # longer than the reader's poll: it times out mid-frame
        a.sendall(data[7:])
        a.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=slow_sender)
    thread.start()
    with a, b:
        frames = list(read_frames(b, stop, poll=0.05))
    thread.join()
    assert frames == [{"type": "heartbeat", "cp_id": "CP-01"}]

"""Central's monitor server with real sockets on 127.0.0.1 (no broker): framing,
heartbeat acks, the silence timeout, and any bytes harming only their connection."""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evc.central.events import ConnectionLost, Heartbeats, MonitorFrame
from evc.central.server import MonitorServer
from evc.central.server_process import heartbeat_ack
from evc.net import Address
from evc.protocol import messages as m
from evc.protocol.framing import FrameDecoder, encode_frame, recv_frame


class Running:
    def __init__(self, silence: float = 30.0) -> None:
        self.events: queue.Queue = queue.Queue()
        self.server = MonitorServer(Address("127.0.0.1", 0), self.events,
                                    silence_timeout=silence)
        self.thread = threading.Thread(target=self.server.run)
        self.thread.start()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.server.address.port), timeout=5)
        return sock

    def next_event(self, kind: type, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(event, kind):
                return event

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(3)
        assert not self.thread.is_alive()


@pytest.fixture
def running():
    r = Running()
    yield r
    r.stop()


def test_frames_become_events_and_heartbeats_are_acked(running):
    with running.connect() as sock:
        sock.sendall(encode_frame(m.Register(cp_id="CP-01").to_wire()))
        frame = running.next_event(MonitorFrame)
        assert isinstance(frame.message, m.Register) and frame.peer.startswith("127.0.0.1:")
        sock.sendall(encode_frame(m.Heartbeat(cp_id="CP-01").to_wire()))
        assert recv_frame(sock)["type"] == "heartbeat_ack"
        running.server.send(frame.conn_id, m.RegisterAccepted(
            cp_id="CP-01", location="x", price_eur_kwh=0.3))
        assert recv_frame(sock)["type"] == "register_ok"
        running.server.close_connection(frame.conn_id, "bye", m.ErrorFrame(reason="bye"))
        assert recv_frame(sock)["type"] == "error"
        assert recv_frame(sock) is None  # then closed
    lost = running.next_event(ConnectionLost)
    assert lost.conn_id == frame.conn_id and lost.reason == "bye"


def test_registered_monitors_heartbeats_come_together_and_before_their_loss(running):
    with running.connect() as sock:
        sock.sendall(encode_frame(m.Register(cp_id="CP-01").to_wire()))
        frame = running.next_event(MonitorFrame)
        running.server.send(frame.conn_id, m.RegisterAccepted(
            cp_id="CP-01", location="x", price_eur_kwh=0.3))
        assert recv_frame(sock)["type"] == "register_ok"
        t0 = time.time()
        for _ in range(3):
            sock.sendall(encode_frame(m.Heartbeat(cp_id="CP-01").to_wire()))
            assert recv_frame(sock)["type"] == "heartbeat_ack"  # each one answered at once
        beats = running.next_event(Heartbeats)  # not an event per beat
        assert beats.beats == ((frame.conn_id, "CP-01"),) and beats.at >= t0
        sock.sendall(encode_frame(m.Heartbeat(cp_id="CP-01").to_wire()))
        assert recv_frame(sock)["type"] == "heartbeat_ack"
    # the last beat is reported (by the timer, or at the latest when the connection goes)
    # before the loss: the brain sees what it said, then that it went
    seen = []
    while not seen or not isinstance(seen[-1], ConnectionLost):
        seen.append(running.events.get(timeout=5))
    assert len(seen) >= 2 and all(isinstance(e, Heartbeats) and e.beats == (
        (frame.conn_id, "CP-01"),) for e in seen[:-1])


def test_a_silent_connection_is_closed_and_reported():
    r = Running(silence=0.5)
    try:
        with r.connect() as sock:
            t0 = time.monotonic()
            lost = r.next_event(ConnectionLost)
            assert "silent" in lost.reason and time.monotonic() - t0 > 0.4  # not before
            sock.settimeout(2)
            assert sock.recv(10) == b""
    finally:
        r.stop()


def test_stop_before_run_and_twice_is_safe():
    server = MonitorServer(Address("127.0.0.1", 0), queue.Queue())
    server.stop()
    server.stop()
    server.run()  # returns at once: already stopped


@pytest.fixture(scope="module")
def shared():
    r = Running()
    yield r
    r.stop()


FRAMES = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda b: struct.pack(">I", len(b)) + b, st.binary(max_size=200)),
    st.sampled_from([
        struct.pack(">I", 0xFFFFFFFF),
        b'\x00\x00\x01\x90{"type":"heartbeat","cp_id":"a","ts":' + b"9" * 400 + b"}",
        encode_frame({"type": "register", "cp_id": "CP-9", "ts": 1e300}),
        struct.pack(">I", 60000) + b"[" * 30000 + b"]" * 30000,
        encode_frame({"type": "register", "cp_id": "CP-9", "location": "\x1b[2J"}),
    ]),
)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=FRAMES)
def test_any_bytes_harm_only_their_own_connection(shared, blob):
    with shared.connect() as good:
        good.sendall(encode_frame(m.Heartbeat(cp_id="CP-01").to_wire()))
        with shared.connect() as bad:
            try:
                bad.sendall(blob)
            except OSError:
                pass
        good.sendall(encode_frame(m.Heartbeat(cp_id="CP-01").to_wire()))
        assert recv_frame(good)["type"] == "heartbeat_ack"
        assert recv_frame(good)["type"] == "heartbeat_ack"
    assert shared.thread.is_alive()
    while not shared.events.empty():
        shared.events.get_nowait()


def test_the_fast_heartbeat_ack_is_the_message_itself():
    frame = heartbeat_ack("CP-01.a_b")
    obj = FrameDecoder().feed(frame)[0]
    ack = m.from_wire(obj)
    assert isinstance(ack, m.HeartbeatAck) and ack.cp_id == "CP-01.a_b"
    assert abs(ack.ts - time.time()) < 5 and ack.msg_id != m.from_wire(
        FrameDecoder().feed(heartbeat_ack("CP-01.a_b"))[0]).msg_id
    assert set(obj) == set(m.HeartbeatAck(cp_id="x").to_wire())  # the same keys, no more

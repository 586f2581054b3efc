"""Central survives hostile and broken clients; every other CP keeps working."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from kafka import KafkaProducer

from evc.protocol import messages as m
from evc.protocol.framing import encode_frame, recv_frame
from evc.protocol.topics import REQUESTS
from tests.helpers import wait_for
from tests.network import Network, Observer

pytestmark = pytest.mark.broker


@pytest.fixture
def net(kafka, prefix, tmp_path, procs):
    network = Network(kafka, prefix, tmp_path, procs)
    network.start_central("--heartbeat-timeout", "2")
    network.start_cp("CP-01")
    return network


def raw_client(net: Network) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", net.port), timeout=5)
    return sock


def answer_then_closed(sock: socket.socket) -> dict | None:
    """The error frame central sends (if any), then EOF."""
    sock.settimeout(5)
    try:
        frame = recv_frame(sock)
    except Exception:  # noqa: BLE001 - reset or garbage: we only need the close
        frame = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if not sock.recv(4096):
                break
        except OSError:
            break
    else:
        raise AssertionError("central did not close the connection")
    return frame


@pytest.mark.parametrize("payload, expect", [
    (b"\x00\x01garbage bytes that are not a frame" * 3, "error"),
    (struct.pack(">I", 0xFFFFFFFF) + b"x" * 10, "exceeds"),
    (struct.pack(">I", 5) + b"nope!", "not JSON"),
    (struct.pack(">I", 3) + b"[1]", "not an object"),
    (encode_frame({"type": "launch_missiles"}), "unknown message type"),
    (encode_frame({"type": "start_supply", "cp_id": "CP-01", "driver_id": "x",
                   "session_id": "s", "price_eur_kwh": 1.0}), "may not send"),
    (encode_frame({"type": "register", "cp_id": 12}), "expected a string"),
])
def test_malformed_frames_close_only_that_connection(net, payload, expect):
    sock = raw_client(net)
    with sock:
        sock.sendall(payload)
        frame = answer_then_closed(sock)
    if frame is not None:
        assert frame["type"] == "error" and (expect in frame["reason"] or expect == "error")
    assert net.central.popen.poll() is None
    assert net.current_state("CP-01") == "Activado"
    assert len(net.state_lines("CP-01")) == 1


def test_truncated_frame_then_close(net):
    sock = raw_client(net)
    sock.sendall(encode_frame(m.Register(cp_id="CP-02").to_wire())[:-3])
    sock.close()
    assert net.current_state("CP-02") is None  # never registered
    assert net.current_state("CP-01") == "Activado"


def test_speaking_before_registering_is_refused(net):
    with raw_client(net) as sock:
        sock.sendall(encode_frame(m.FaultReport(cp_id="CP-01", reason="spoof").to_wire()))
        frame = answer_then_closed(sock)
    assert frame and frame["type"] == "register_rejected"
    assert net.current_state("CP-01") == "Activado"


def test_silent_connections_are_closed_after_the_timeout(net):
    flood = [raw_client(net) for _ in range(200)]
    try:
        t0 = time.monotonic()
        for sock in flood:
            answer_then_closed(sock)
        assert time.monotonic() - t0 < 2 + 3
    finally:
        for sock in flood:
            sock.close()
    assert net.current_state("CP-01") == "Activado"
    assert len(net.state_lines("CP-01")) == 1
    # central still accepts a real monitor afterwards
    net.start_cp("CP-02")


def test_malformed_kafka_messages_are_skipped(net, kafka, bus):
    observer = Observer(bus)
    try:
        raw = KafkaProducer(bootstrap_servers=kafka)
        for junk in [b"\xff", b"{}", b'{"type": "charge_request"}', b"[]",
                     b'{"type": "telemetry", "cp_id": 1}']:
            raw.send(bus.topic(REQUESTS), key=b"CP-01", value=junk)
        raw.flush()
        raw.close()
        req = m.ChargeRequest(driver_id="D-9", cp_id="CP-01")
        bus.send(REQUESTS, req, "CP-01")
        bus.flush()
        auth = observer.wait(m.Authorization, request_id=req.msg_id)[0]
        assert auth.authorized
    finally:
        observer.close()
    assert net.central.popen.poll() is None
    wait_for(lambda: net.current_state("CP-01") == "Suministrando", 5, "supply")

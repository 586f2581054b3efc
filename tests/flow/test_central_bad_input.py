"""Central survives hostile and broken clients; every other CP keeps working."""

from __future__ import annotations

import socket
import struct

import pytest
from kafka import KafkaProducer

from evc.protocol import messages as m
from evc.protocol.framing import encode_frame, recv_frame
from tests.helpers import Proc, wait_for
from tests.network import Network, Observer

pytestmark = pytest.mark.central("--heartbeat-timeout", "2")


@pytest.fixture(autouse=True)
def serving(net: Network) -> None:
    """CP-01 serves throughout: what harms one connection must not touch it."""
    net.start_cp("CP-01")


def frame_of(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def raw_client(net: Network) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", net.port), timeout=5)
    return sock


def answer_then_closed(sock: socket.socket) -> dict | None:
    """Central's last frame (None if it closed without one), then a clean EOF.

    Central shuts its side down after its last word and drains what the peer still
    sends, so the peer reads that word and a FIN, never a reset.
    """
    sock.settimeout(5)
    frame = recv_frame(sock)
    if frame is not None:
        assert recv_frame(sock) is None, "more after the last frame"
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
    # poison that once killed central's TCP thread, and its family
    (frame_of(b'{"type":"register","cp_id":"CP-05","ts":' + b"9" * 400 + b"}"), "too large"),
    (frame_of(b'{"type":"register","cp_id":"CP-05","ts":1e999}'), "finite"),
    (frame_of(b"[" * 30000 + b"]" * 30000), "not JSON"),
    (frame_of(b'{"type":"register","cp_id":"CP-05","location":"\xff\xfe"}'), "UTF-8"),
    (frame_of(b'{"type":"register","cp_id":"CP-05","location":"\\u001b[2J"}'), "control"),
    (frame_of(b'{"type":"register","cp_id":"CP\\u001b[31m"}'), "bad cp_id"),
])
def test_malformed_frames_close_only_that_connection(net, payload, expect):
    sock = raw_client(net)
    with sock:
        sock.sendall(payload)
        frame = answer_then_closed(sock)
    assert frame is not None and frame["type"] == "error"
    assert expect in frame["reason"] or expect == "error", frame
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
        for sock in flood:
            answer_then_closed(sock)  # each closed by central (within its own deadline)
    finally:
        for sock in flood:
            sock.close()
    assert net.current_state("CP-01") == "Activado"
    assert len(net.state_lines("CP-01")) == 1
    # central still accepts a real monitor afterwards
    net.start_cp("CP-02")


POISON = [b"\xff", b"{}", b'{"type": "charge_request"}', b"[]", b'"a bare string"',
          b'{"type": "telemetry", "cp_id": 1}', b"null", b"1e999",
          b'{"type":"charge_request","driver_id":"D-1","cp_id_solicitado":"CP-01","ts":'
          + b"9" * 400 + b"}",
          b'{"type":"start_supply","cp_id":"CP-01","driver_id":"D-1","session_id":"s",'
          b'"price_eur_kwh":1e999}',
          b'{"type":"stop","cp_id":"CP-01","ts":' + b"1" * 5000 + b"}",
          b"[" * 50000 + b"]" * 50000, b'{"driver_id": [], "cp_id_solicitado": {}}',
          b'{"type":"central_status","central":"x","started_at":"yesterday"}']


def test_poison_records_on_every_topic_harm_nobody(net, kafka, bus):
    """Each poison record is skipped once by everyone who reads it; all goes on, also
    after central restarts (it never reads them again)."""
    from evc.protocol.topics import ALL_TOPICS

    observer = Observer(bus)
    d = Proc(["driver", kafka, "D-9", "--topic-prefix", net.prefix,
              "--charge-seconds", "2"], name="driver D-9")
    net.procs.append(d)
    try:
        raw = KafkaProducer(bootstrap_servers=kafka)
        for topic in ALL_TOPICS:
            for junk in POISON:
                raw.send(bus.topic(topic), key=b"CP-01", value=junk)
                raw.send(bus.topic(topic), key=b"D-9", value=junk)
        raw.flush()
        raw.close()
        d.send("CP-01")
        d.wait_line("TICKET at CP-01", timeout=30)
        wait_for(lambda: net.central_log.read_text().count("skipping malformed") >= 2 * 2 * len(
            POISON), 10, "central skipping each poison record once")
        net.central.stop()
        central_log = net.central_log.read_text()
        again = net.start_central("--heartbeat-timeout", "2")
        net.wait_state("CP-01", "Activado", timeout=15)
        d.send("CP-01")
        d.wait_line("TICKET at CP-01", count=2, timeout=30)
        log_after = net.central_log.read_text()[len(central_log):]
        assert "skipping malformed" not in log_after  # applied offsets: never read again
        assert again.popen.poll() is None
    finally:
        observer.close()
    for proc in (net.engines["CP-01"], net.monitors["CP-01"], d):
        assert proc.popen.poll() is None, proc.output[-2000:]
        assert "Traceback" not in proc.output

"""Central's TCP server for monitors: one selector thread, many connections.

The server only moves bytes: it frames, decodes and validates, answers
heartbeats, enforces the deadlines and limits, and hands typed frames and losses
to the brain as events. It never decides anything about a charge point.

No stranger ties up a socket: a connection must be registered (central sent it
``register_ok``) within ``register_timeout``, whatever it sends meanwhile; a
registered one must send a whole frame at least every ``silence_timeout`` (bytes
trickled one by one do not count); one address may hold at most
``per_address`` connections that are not registered; when the process runs out
of file descriptors the listener pauses instead of spinning.
"""

from __future__ import annotations

import logging
import queue
import resource
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from evc.central.events import ConnectionLost, Event, Heartbeats, MonitorFrame
from evc.errors import ConfigError, ProtocolError
from evc.net import Address
from evc.protocol.framing import FrameDecoder, encode_frame
from evc.protocol.messages import (
    TCP_CENTRAL_TYPES,
    ErrorFrame,
    Heartbeat,
    HeartbeatAck,
    Message,
    RegisterAccepted,
    from_wire,
)

log = logging.getLogger(__name__)

MAX_OUTBUF = 1 << 20
BEAT_REPORT = 0.2  # seconds between two Heartbeats events


@dataclass
class _Conn:
    conn_id: int
    sock: socket.socket
    peer: str
    last_rx: float  # the last whole frame (or the connection's start)
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    registered: bool = False
    host: str = ""
    started: float = field(default_factory=time.monotonic)
    outbuf: bytearray = field(default_factory=bytearray)
    closing: str | None = None  # close once outbuf is flushed, with this reason
    writing: bool = False  # registered for EVENT_WRITE (outbuf did not fit the socket)


def connection_budget(reserve: int = 256) -> int:
    """How many monitors central can hold: its open-file limit, raised to the hard limit
    (up to 65,536), less ``reserve`` for Kafka, the store and the logs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    limit = 65536 if soft == resource.RLIM_INFINITY else soft
    return max(16, limit - reserve)


class MonitorServer:
    def __init__(
        self,
        listen: Address,
        events: queue.Queue[Event],
        *,
        silence_timeout: float = 3.0,
        max_connections: int | None = None,
        register_timeout: float = 5.0,
        per_address: int = 64,
    ) -> None:
        self.events = events
        self.silence_timeout = silence_timeout
        self.max_connections = max_connections or connection_budget()
        self.register_timeout = register_timeout
        self.per_address = per_address
        self._unregistered: dict[str, int] = {}  # host -> connections not registered yet
        self._accept_paused_until = 0.0
        self._sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._beats: dict[int, str] = {}  # registered conn_id -> cp_id, since the last report
        self._next_beats = 0.0
        self._next_id = 1
        self._next_expiry_check = 0.0
        self._requests: queue.SimpleQueue[tuple[str, int, object]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._life = threading.Lock()
        self._running = False
        self._cleaned = False
        # Closed connections still draining: central said its last word and sent FIN; it
        # reads and drops what the peer still sends for a moment, so the peer gets that
        # last word (an error frame) instead of a reset.
        self._lingering: dict[socket.socket, float] = {}
        try:
            family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
            self._listener = socket.socket(family, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(listen.pair)
            self._listener.listen(1024)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        self._listener.setblocking(False)
        self.address = Address(listen.host, self._listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    # ------------------------------------------------------------------ API (any thread)
    def send(self, conn_id: int, message: Message) -> None:
        self._request("send", conn_id, message)

    def close_connection(self, conn_id: int, reason: str, final: Message | None = None) -> None:
        """Send ``final`` (if any), then close; the brain gets ConnectionLost(reason)."""
        self._request("close", conn_id, (reason, final))

    def stop(self) -> None:
        """End ``run`` (which closes everything), or close now if it never ran; idempotent."""
        with self._life:
            self._stop.set()
            running = self._running
        if running:
            self._wake()
        else:
            self._cleanup()

    def _request(self, kind: str, conn_id: int, payload: object) -> None:
        self._requests.put((kind, conn_id, payload))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already awake (buffer full) or shutting down

    # ------------------------------------------------------------------ loop (own thread)
    def run(self) -> None:
        """The selector loop, until ``stop``; run it in its own thread."""
        with self._life:
            if self._stop.is_set():
                return
            self._running = True
        try:
            while not self._stop.is_set():
                for key, mask in self._sel.select(timeout=0.2):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    elif key.data == "linger":
                        self._linger_read(key.fileobj)  # type: ignore[arg-type]
                    else:
                        conn = self._conns.get(key.data)
                        if conn is None:
                            continue
                        if mask & selectors.EVENT_READ:
                            self._read(conn)
                        if mask & selectors.EVENT_WRITE and conn.conn_id in self._conns:
                            self._flush(conn)
                self._serve_requests()
                self._expire_silent()
                if self._beats and time.monotonic() >= self._next_beats:
                    self._report_beats()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        with self._life:
            if self._cleaned:
                return
            self._cleaned = True
        for conn in list(self._conns.values()):
            self._drop(conn, "central shutting down", notify=False)
        for sock in list(self._lingering):
            self._end_linger(sock)
        self._sel.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: pause accepting, serve the others
                log.error("accept failed (%s); not accepting for 0.5 s", exc)
                self._sel.unregister(self._listener)
                self._accept_paused_until = time.monotonic() + 0.5
                return
            peer = f"{addr[0]}:{addr[1]}"
            host = str(addr[0])
            if len(self._conns) >= self.max_connections:
                log.warning("refusing %s: %d connections already", peer, len(self._conns))
                sock.close()
                continue
            if self._unregistered.get(host, 0) >= self.per_address:
                log.warning("refusing %s: %d unregistered connections from %s already", peer,
                            self.per_address, host)
                sock.close()
                continue
            self._unregistered[host] = self._unregistered.get(host, 0) + 1
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(self._next_id, sock, peer, time.monotonic(), host=host)
            self._next_id += 1
            self._conns[conn.conn_id] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn.conn_id)
            log.debug("connection %d from %s", conn.conn_id, peer)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(conn, f"connection broken ({exc.strerror or exc})")
            return
        if not data:
            try:
                conn.decoder.close()
            except ProtocolError as exc:
                self._drop(conn, f"closed by peer mid-frame: {exc}")
                return
            self._drop(conn, "connection closed by monitor")
            return
        if conn.closing:
            return
        try:
            for obj in conn.decoder.feed(data):
                conn.last_rx = time.monotonic()  # whole frames count, trickled bytes do not
                message = from_wire(obj)
                if not isinstance(message, TCP_CENTRAL_TYPES):
                    raise ProtocolError(f"a monitor may not send {message.TYPE!r}")
                if isinstance(message, Heartbeat):
                    self._queue_out(conn, HeartbeatAck(cp_id=message.cp_id))
                    if conn.registered:
                        self._beats[conn.conn_id] = message.cp_id
                        continue
                self.events.put(MonitorFrame(conn.conn_id, conn.peer, message))
        except ProtocolError as exc:
            log.warning("protocol error from %s: %s", conn.peer, exc)
            self._queue_out(conn, ErrorFrame(reason=str(exc)))
            self._close_after_flush(conn, f"protocol error: {exc}")

    def _report_beats(self) -> None:
        beats, self._beats = self._beats, {}
        self.events.put(Heartbeats(tuple(beats.items()), time.time()))
        self._next_beats = time.monotonic() + BEAT_REPORT

    def _registered(self, conn: _Conn) -> None:
        if not conn.registered:
            conn.registered = True
            self._forget_unregistered(conn)

    def _forget_unregistered(self, conn: _Conn) -> None:
        left = self._unregistered.get(conn.host, 0) - 1
        if left > 0:
            self._unregistered[conn.host] = left
        else:
            self._unregistered.pop(conn.host, None)

    def _queue_out(self, conn: _Conn, message: Message) -> None:
        if isinstance(message, RegisterAccepted):
            self._registered(conn)
        try:
            conn.outbuf += encode_frame(message.to_wire())
        except ProtocolError as exc:
            log.error("cannot encode %s: %s", message.TYPE, exc)
            return
        if len(conn.outbuf) > MAX_OUTBUF:
            self._drop(conn, "monitor does not read its messages")
            return
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            while conn.outbuf:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._drop(conn, f"connection broken ({exc.strerror or exc})")
            return
        if conn.outbuf:
            if not conn.writing:
                self._sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                 conn.conn_id)
                conn.writing = True
        elif conn.closing:
            self._drop(conn, conn.closing, linger=True)
        elif conn.writing:  # one system call only when the interest changes
            self._sel.modify(conn.sock, selectors.EVENT_READ, conn.conn_id)
            conn.writing = False

    def _close_after_flush(self, conn: _Conn, reason: str) -> None:
        conn.closing = reason
        self._flush(conn)

    def _serve_requests(self) -> None:
        while True:
            try:
                kind, conn_id, payload = self._requests.get_nowait()
            except queue.Empty:
                return
            conn = self._conns.get(conn_id)
            if conn is None:
                continue
            if kind == "send":
                assert isinstance(payload, Message)
                self._queue_out(conn, payload)
            elif kind == "close":
                reason, final = payload  # type: ignore[misc]
                if final is not None:
                    self._queue_out(conn, final)
                if conn.conn_id in self._conns:
                    self._close_after_flush(conn, reason)

    def _linger_read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._end_linger(sock)

    def _end_linger(self, sock: socket.socket) -> None:
        self._lingering.pop(sock, None)
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    def _expire_silent(self) -> None:
        now = time.monotonic()
        if now < self._next_expiry_check:
            return
        self._next_expiry_check = now + 0.1
        for sock, until in list(self._lingering.items()):
            if now > until:
                self._end_linger(sock)
        if self._accept_paused_until and now > self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        for conn in list(self._conns.values()):
            if not conn.registered and now - conn.started > self.register_timeout:
                self._drop(conn, f"did not register within {self.register_timeout:g} s")
            elif now - conn.last_rx > self.silence_timeout:
                self._drop(conn, f"monitor silent for {self.silence_timeout:g} s")
            elif conn.closing and now - conn.last_rx > 1.0 and conn.outbuf:
                self._drop(conn, conn.closing)

    def _drop(self, conn: _Conn, reason: str, *, notify: bool = True,
              linger: bool = False) -> None:
        if self._conns.pop(conn.conn_id, None) is None:
            return
        if conn.conn_id in self._beats and notify:
            self._report_beats()  # what it said before it went, first
        if not conn.registered:
            self._forget_unregistered(conn)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        if linger and len(self._lingering) < 1024:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
                self._sel.register(conn.sock, selectors.EVENT_READ, "linger")
                self._lingering[conn.sock] = time.monotonic() + 1.0
            except (OSError, ValueError):
                conn.sock.close()
        else:
            try:
                conn.sock.close()
            except OSError:
                pass
        if notify:
            self.events.put(ConnectionLost(conn.conn_id, conn.peer, reason))

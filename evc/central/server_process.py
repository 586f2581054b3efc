"""Central's TCP process: the selector loop that serves every monitor connection
(server.py starts it as ``python -m evc.central.server_process`` and is what central
sees). It frames, decodes and validates, answers heartbeats, enforces the deadlines and
limits, and reports typed frames and losses to central over the socket pair
(pipe.py)."""


from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from evc.central import pipe
from evc.central.events import ConnectionLost, Event, Heartbeats, MonitorFrame
from evc.central.server import BEAT_REPORT, MAX_OUTBUF, PARENT_SILENCE
from evc.errors import ProtocolError
from evc.ports import assert_never
from evc.protocol.framing import HEADER, FrameDecoder, encode_frame
from evc.protocol.messages import (
    TCP_CENTRAL_TYPES,
    ErrorFrame,
    Heartbeat,
    HeartbeatAck,
    Message,
    RegisterAccepted,
    from_wire,
    new_id,
)

log = logging.getLogger("evc.central.server")  # in the child, where this is __main__

MAX_PARENT_BACKLOG = 64 << 20  # events the parent has not read: past this it is gone


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


def heartbeat_ack(cp_id: str) -> bytes:
    """The frame of ``HeartbeatAck(cp_id=cp_id)``, built as bytes: the same JSON for a
    fraction of the cost (the child answers thousands a second). ``cp_id`` came in a
    valid frame, so it follows protocol.ids and needs no escaping."""
    payload = (f'{{"type":"{HeartbeatAck.TYPE}","msg_id":"{new_id()}","ts":{time.time()!r},'
               f'"cp_id":"{cp_id}"}}').encode("ascii")
    return HEADER.pack(len(payload)) + payload


def _send_some(sock: socket.socket, buf: bytearray) -> None:
    """Send what a non-blocking socket takes now of ``buf``; the rest stays in it."""
    try:
        while buf:
            del buf[:sock.send(buf)]
    except (BlockingIOError, InterruptedError):
        pass


# ---------------------------------------------------------------------- the child's loop


class _Loop:
    """The selector loop (the child process' only thread)."""

    def __init__(self, listener: socket.socket, parent: socket.socket, *,
                 silence_timeout: float, register_timeout: float, per_address: int,
                 max_connections: int | None) -> None:
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
        self._stopping = False
        # Closed connections still draining: central said its last word and sent FIN; it
        # reads and drops what the peer still sends for a moment, so the peer gets that
        # last word (an error frame) instead of a reset.
        self._lingering: dict[socket.socket, float] = {}
        self._listener = listener
        self._listener.setblocking(False)
        self._parent = parent
        self._parent.setblocking(False)
        self._to_parent = bytearray()
        self._from_parent = pipe.Unpacker()
        self._parent_heard = time.monotonic()
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._parent, selectors.EVENT_READ, "parent")

    def emit(self, item: pipe.FromChild) -> None:
        """Queue an event (or a log record) for central; written as the socket takes it."""
        self._to_parent += pipe.pack(item)
        if len(self._to_parent) > MAX_PARENT_BACKLOG:
            raise SystemExit("central does not read its TCP server's events: stopping")
        self._flush_parent()

    def _flush_parent(self) -> None:
        _send_some(self._parent, self._to_parent)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._to_parent else 0)
        if self._sel.get_key(self._parent).events != events:
            self._sel.modify(self._parent, events, "parent")

    def _event(self, event: Event) -> None:
        self.emit(event)

    def run(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self._sel.select(timeout=0.2):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "parent":
                        if mask & selectors.EVENT_WRITE:
                            self._flush_parent()
                        if mask & selectors.EVENT_READ:
                            self._from_central()
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
                self._expire_silent()
                if self._beats and time.monotonic() >= self._next_beats:
                    self._report_beats()
        except BaseException as exc:  # noqa: BLE001 - a bug: said in central's log, then out
            log.critical("TCP server process died: %s", exc, exc_info=True)
            raise
        finally:
            self._cleanup()

    def _from_central(self) -> None:
        try:
            data = self._parent.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # central is gone
            self._stopping = True
            return
        self._parent_heard = time.monotonic()
        requests: list[pipe.ToChild] = self._from_parent.feed(data)
        for request in requests:
            match request:
                case pipe.Alive():
                    pass
                case pipe.Stop():
                    self._stopping = True
                    return
                case pipe.SendFrame():
                    conn = self._conns.get(request.conn_id)
                    if conn is not None:
                        self._queue_out(conn, request.message)
                case pipe.CloseConnection():
                    conn = self._conns.get(request.conn_id)
                    if conn is None:
                        continue
                    if request.final is not None:
                        self._queue_out(conn, request.final)
                    if conn.conn_id in self._conns:
                        self._close_after_flush(conn, request.reason)
                case _:
                    assert_never(request)

    def _cleanup(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn, "central shutting down", notify=False)
        for sock in list(self._lingering):
            self._end_linger(sock)
        self._sel.close()
        self._listener.close()
        try:  # what central has not read yet, if it is still there to read it
            self._parent.setblocking(True)
            self._parent.settimeout(0.5)
            self._parent.sendall(self._to_parent)
        except OSError:
            pass
        self._parent.close()

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
                    if time.monotonic() - self._parent_heard < PARENT_SILENCE:
                        self._queue_bytes(conn, heartbeat_ack(message.cp_id))
                    if conn.registered:
                        self._beats[conn.conn_id] = message.cp_id
                        continue
                self._event(MonitorFrame(conn.conn_id, conn.peer, message))
        except ProtocolError as exc:
            log.warning("protocol error from %s: %s", conn.peer, exc)
            self._queue_out(conn, ErrorFrame(reason=str(exc)))
            self._close_after_flush(conn, f"protocol error: {exc}")

    def _report_beats(self) -> None:
        beats, self._beats = self._beats, {}
        self._event(Heartbeats(tuple(beats.items()), time.time()))
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
            frame = encode_frame(message.to_wire())
        except ProtocolError as exc:
            log.error("cannot encode %s: %s", message.TYPE, exc)
            return
        self._queue_bytes(conn, frame)

    def _queue_bytes(self, conn: _Conn, frame: bytes) -> None:
        conn.outbuf += frame
        if len(conn.outbuf) > MAX_OUTBUF:
            self._drop(conn, "monitor does not read its messages")
            return
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            _send_some(conn.sock, conn.outbuf)
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
            self._event(ConnectionLost(conn.conn_id, conn.peer, reason))


class _ToParent(logging.Handler):
    """The child's log records go to central's log, through central."""

    def __init__(self, loop: _Loop | None = None) -> None:
        super().__init__()
        self.loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        if self.loop is not None:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.loop.emit(pipe.ChildLog(record.name, record.levelno, text))


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when central dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere: the end of the socket pair still stops it
    if os.getppid() != parent:  # central died before the line above
        os._exit(0)


def _child_main(argv: list[str]) -> None:
    listener_fd, parent_fd, parent_pid, config_text = argv
    _die_with_parent(int(parent_pid))
    # Ctrl+C, SIGTERM and a closed terminal's SIGHUP reach the whole process group:
    # central stops this process itself, after its own last words to the monitors
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    config = json.loads(config_text)
    handler = _ToParent()
    logging.basicConfig(level=config.pop("log_level"), handlers=[handler])
    listener = socket.socket(fileno=int(listener_fd))
    parent = socket.socket(fileno=int(parent_fd))
    loop = _Loop(listener, parent, **config)
    handler.loop = loop
    try:
        loop.run()
    except BaseException:  # noqa: BLE001 - logged by the loop; central sees this end
        raise SystemExit(1) from None


if __name__ == "__main__":
    _child_main(sys.argv[1:])

"""Central's TCP server for monitors: one selector loop, many connections, in a process
of its own.

The server only moves bytes: it frames, decodes and validates, answers
heartbeats, enforces the deadlines and limits, and hands typed frames and losses
to the brain as events. It never decides anything about a charge point.

No stranger ties up a socket: a connection must be registered (central sent it
``register_ok``) within ``register_timeout``, whatever it sends meanwhile; a
registered one must send a whole frame at least every ``silence_timeout`` (bytes
trickled one by one do not count); one address may hold at most
``per_address`` connections that are not registered; when the process runs out
of file descriptors the listener pauses instead of spinning.

Why a process: thousands of monitors beat every second, and each beat is a frame to
decode and one to answer. In central's own process that work would hold the one
interpreter lock its rules, its Kafka clients and its board share; in a child of its
own it runs on the other core. ``MonitorServer`` is what central sees (``send``,
``close_connection``, ``stop`` from any thread; ``run`` in one thread, which starts
the child and turns what it reports into events); ``_Loop`` is the child's selector
loop. They talk over a socket pair in length-prefixed pickles (each other's, nobody
else's). The child dies with its parent (a parent-death signal, and the end of the
pair), ignores Ctrl+C (the parent stops it), and a child that dies alone ends
central loudly.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time

from evc.central.events import Event
from evc.central.pipe import (
    Alive,
    ChildLog,
    CloseConnection,
    FromChild,
    SendFrame,
    Stop,
    ToChild,
    Unpacker,
    pack,
)
from evc.errors import ConfigError
from evc.net import Address
from evc.protocol.messages import Message

log = logging.getLogger("evc.central.server")

MAX_OUTBUF = 1 << 20
BEAT_REPORT = 0.2  # seconds between two Heartbeats events
# Central tells its child it is alive this often; a child that has not heard from it for
# PARENT_SILENCE stops answering heartbeats, so that a frozen central (stopped, swapped
# out) looks to its monitors as silent as it is, and they move to another central.
ALIVE_EVERY = 0.25
PARENT_SILENCE = 1.0


# ---------------------------------------------------------------------- central's side


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
        self._config = {"silence_timeout": silence_timeout, "register_timeout": register_timeout,
                        "per_address": per_address, "max_connections": max_connections,
                        "log_level": log.getEffectiveLevel()}
        self._stop = threading.Event()
        self._life = threading.Lock()
        self._send_lock = threading.Lock()
        self._running = False
        self._cleaned = False
        self._child: subprocess.Popen[bytes] | None = None
        try:
            family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
            self._listener = socket.socket(family, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(listen.pair)
            self._listener.listen(1024)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        self.address = Address(listen.host, self._listener.getsockname()[1])
        self._pair, self._child_end = socket.socketpair()

    # ------------------------------------------------------------------ API (any thread)
    def send(self, conn_id: int, message: Message) -> None:
        self._request(SendFrame(conn_id, message))

    def close_connection(self, conn_id: int, reason: str, final: Message | None = None) -> None:
        """Send ``final`` (if any), then close; the brain gets ConnectionLost(reason)."""
        self._request(CloseConnection(conn_id, reason, final))

    def stop(self) -> None:
        """End ``run`` (whose child closes every connection), or close now if it never
        ran; idempotent."""
        with self._life:
            self._stop.set()
            running = self._running
        if running:
            self._request(Stop())
        else:
            self._cleanup()

    def _request(self, request: ToChild) -> None:
        data = pack(request)
        with self._send_lock:
            try:
                self._pair.sendall(data)
            except OSError:
                pass  # the child is gone: run() says so

    # ------------------------------------------------------------------ run (own thread)
    def run(self) -> None:
        """Start the child, then hand what it reports to the brain until ``stop``."""
        with self._life:
            if self._stop.is_set():
                return
            self._running = True
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "evc.central.server_process", str(self._listener.fileno()),
                 str(self._child_end.fileno()), str(os.getpid()), json.dumps(self._config)],
                pass_fds=(self._listener.fileno(), self._child_end.fileno()),
                stdin=subprocess.DEVNULL)
            self._listener.close()  # the child's now: the port goes with it
            self._child_end.close()
            self._pump()
        finally:
            self._cleanup()

    def _pump(self) -> None:
        unpacker = Unpacker()
        self._pair.settimeout(ALIVE_EVERY)
        next_alive = 0.0
        while True:
            if time.monotonic() >= next_alive:
                self._request(Alive())
                next_alive = time.monotonic() + ALIVE_EVERY
            try:
                data = self._pair.recv(1 << 16)
            except TimeoutError:
                if self._child is not None and self._child.poll() is not None:
                    data = b""
                else:
                    continue
            except OSError:
                data = b""
            if not data:
                if self._stop.is_set():
                    return
                code = self._child.wait(1.0) if self._child is not None else None
                raise RuntimeError(f"central's TCP server process ended (exit code {code})")
            items: list[FromChild] = unpacker.feed(data)
            for item in items:
                if isinstance(item, ChildLog):
                    logging.getLogger(item.name).log(item.level, "%s", item.text)
                else:
                    self.events.put(item)

    def _cleanup(self) -> None:
        with self._life:
            if self._cleaned:
                return
            self._cleaned = True
        child = self._child
        if child is not None:
            try:
                child.wait(1.0)
            except subprocess.TimeoutExpired:
                log.warning("TCP server process did not stop in time: killed")
                child.kill()
                child.wait(1.0)
        for sock in (self._listener, self._child_end, self._pair):
            try:
                sock.close()
            except OSError:
                pass

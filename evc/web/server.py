"""The web board's HTTP server (the standard library's threading server; docs/WEB.md).

The routes are web/app.py's table: (method, pattern) -> handler. Every answer that is
not a page or a file is JSON, errors included (``{"error": {"status": …, "message": …}}``), and no
exception leaves a handler as a traceback. Pages run only the package's own script
(Content-Security-Policy), which writes every network-supplied text as text.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from evc.web.hub import Unavailable

log = logging.getLogger(__name__)

MAX_BODY = 16 << 10  # bytes: operator commands are a few words
MAX_CONNECTIONS = 256  # open at once (event streams stay open); more get 503
KEEPALIVE = 15.0  # s between comments on an idle event stream
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/board.js": ("board.js", "text/javascript; charset=utf-8"),
          "/static/board.css": ("board.css", "text/css; charset=utf-8"),
          "/favicon.ico": ("favicon.svg", "image/svg+xml")}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    params: dict[str, str]
    headers: Any  # email.message.Message: case-insensitive .get
    client: str  # the peer's address
    body: bytes = b""

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] | None = None


Handler = Callable[[Request], Reply]


def json_reply(data: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(data, ensure_ascii=False).encode("utf-8"))


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": {"status": status, "message": message}}).encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    server_version = "evc-web"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 10  # s to send a request: a slow or silent client loses only its connection
    app: Any  # the WebApp (web/app.py), set on the subclass made per server
    stop: threading.Event

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line, a header too long, an unknown
        method) as JSON too, with a status line even for what looked like HTTP/0.9."""
        self.request_version = "HTTP/1.1"
        try:
            self._send(Reply(code, error_body(code, message or HTTPStatus(code).phrase)),
                       close=True)
        except OSError:
            pass

    def _send(self, reply: Reply, *, close: bool = False) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        for name, value in (reply.headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _handle(self) -> None:
        try:
            url = urlsplit(self.path)
            path = url.path or "/"
            if self.command in ("GET", "HEAD") and path in self.app.files:
                body, kind = self.app.files[path]
                self._send(Reply(200, body, kind))
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0 or length > MAX_BODY:
                raise HttpError(413, f"a request body is at most {MAX_BODY} bytes")
            body = self.rfile.read(length) if length else b""
            req = Request(self.command, path, parse_qs(url.query), {}, self.headers,
                          self.client_address[0], body)
            if self.command == "GET" and path == self.app.stream_path:
                self._stream(self.app.stream_view(req))
                return
            handler, req.params = self.app.route(self.command, path)
            reply = handler(req)
        except HttpError as exc:
            reply = Reply(exc.status, error_body(exc.status, exc.message))
        except Unavailable as exc:
            reply = Reply(503, error_body(503, str(exc)))
        except ValueError as exc:
            reply = Reply(400, error_body(400, f"bad request: {exc}"))
        except (ConnectionError, TimeoutError, socket.timeout):
            self.close_connection = True
            return
        except Exception as exc:  # noqa: BLE001 - one clear answer, never a traceback
            log.exception("web request %s %s failed", self.command, self.path[:200])
            reply = Reply(500, error_body(500, f"internal error: {type(exc).__name__}"))
        try:
            self._send(reply)
        except OSError:
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def _stream(self, operator: bool) -> None:
        """Server-Sent Events: the whole board first (``board``), then at each change only
        what changed (``delta``; the whole board again after a missed one), at most a
        few a second (the owner coalesces); a comment when idle so that proxies keep the
        line open; the operator's board for a logged-in operator."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        hub = self.app.hub
        self.wfile.write(b"retry: 2000\n\n")
        version = -1  # the version of the board this page has
        while not self.stop.is_set() and not hub.closed:
            if version < 0:  # its first, or it missed a delta: the whole board
                version, doc = hub.ask(lambda st: st.board(operator))
                self.wfile.write(b"event: board\ndata: " + doc + b"\n\n")
                self.wfile.flush()
            snap = hub.newer(version, KEEPALIVE)
            if hub.closed or self.stop.is_set():
                break
            if snap.version == version:
                self.wfile.write(b": idle\n\n")
            elif snap.base == version:  # what changed since the board it has
                doc = snap.operator_delta if operator else snap.public_delta
                self.wfile.write(b"event: delta\ndata: " + doc + b"\n\n")
                version = snap.version
            else:
                version = -1
                continue
            self.wfile.flush()


class WebServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: Any, stop: threading.Event) -> None:
        handler = type("Handler", (_Handler,), {"app": app, "stop": stop})
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                body = error_body(503, "too many connections")
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                                b"Content-Type: application/json\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended badly", client_address, exc_info=True)


def serve(server: WebServer, stop: threading.Event) -> None:
    """Serve until ``stop`` (the owner of the process sets it)."""
    def watch() -> None:
        stop.wait()
        server.shutdown()

    threading.Thread(target=watch, name="web-shutdown", daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        time.sleep(0)

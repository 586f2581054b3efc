"""The gateway's WebSocket door: the handshake (subprotocol ``ocpp1.6``, the charger id
as the path's last segment, HTTP Basic for security profile 1) and each charger's frames.

A connection that does not offer ``ocpp1.6`` is refused at the handshake (websockets
answers 400); an id central does not know, or a wrong password, gets 401 and is audited.
Each frame goes through ocppj.py: what is not OCPP-J gets a ProtocolError, an unknown
action NotImplemented, a payload against its schema the specification's code; the
connection and every other charger go on. A frame over ``MAX_FRAME`` closes the
connection (1009, as WebSocket says). The charger's CALLs are handled one after another,
as it sends them; the gateway's own CALLs to it go one at a time (OCPP-J 1.6, 4.1.1),
each answered within ``CALL_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from evc.ocpp import ocppj
from evc.ocpp.gateway import Gateway
from evc.ocpp.ocppj import Call, CallError, CallResult, OcppError
from evc.protocol import auth
from evc.protocol.ids import is_id, printable

log = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp1.6"
MAX_FRAME = 256 * 1024  # OCPP messages are small; a larger one closes the connection
CALL_TIMEOUT = 30.0
QUEUED_CALLS = 8  # a charger waits for each answer; more than this at once is refused
REMEMBERED = 32  # answers kept per connection for CALLs sent again


class Connection:
    """One charger's WebSocket: the gateway's CALLs to it and their answers."""

    def __init__(self, ws: ServerConnection, cp_id: str, *, validate: bool) -> None:
        self.ws = ws
        self.cp_id = cp_id
        self.validate = validate
        self._waiting: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._lock = asyncio.Lock()
        # the answers to its last CALLs by unique id: a CALL sent again (its answer lost)
        # gets the same answer, and is not handled twice
        self.replies: OrderedDict[str, str] = OrderedDict()

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The charger's answer (ConnectionError when it is gone, TimeoutError when it
        does not answer, OcppError for a CALLERROR or an answer against its schema)."""
        async with self._lock:
            unique_id = uuid.uuid4().hex
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._waiting[unique_id] = (action, future)
            try:
                await self.ws.send(ocppj.encode_call(unique_id, action, payload))
                return await asyncio.wait_for(future, CALL_TIMEOUT)
            except ConnectionClosed as exc:
                raise ConnectionError(f"{self.cp_id} disconnected") from exc
            finally:
                self._waiting.pop(unique_id, None)

    def answered(self, frame: CallResult | CallError) -> None:
        waiting = self._waiting.get(frame.unique_id)
        if waiting is None:
            log.info("%s: an answer to no call of ours (%s)", self.cp_id, frame.unique_id)
            return
        action, future = waiting
        if future.done():
            return
        if isinstance(frame, CallError):
            future.set_exception(OcppError(frame.code, frame.description, frame.unique_id))
            return
        if self.validate:
            try:
                ocppj.check(action, frame.payload, response=True, unique_id=frame.unique_id)
            except OcppError as exc:
                future.set_exception(exc)
                return
        future.set_result(frame.payload)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)


def charger_id(path: str) -> str:
    """The last segment of the request's path (``/ocpp/CP-07`` -> ``CP-07``)."""
    return unquote(path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])


def basic_password(headers: Headers, cp_id: str) -> str | None:
    """The password of an ``Authorization: Basic`` header for user ``cp_id``, else None."""
    value = headers.get("Authorization", "")
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode(
            "utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password if user == cp_id else None


class Door:
    """Who may open a WebSocket (``process_request``), and each charger's frames."""

    def __init__(self, gateway: Gateway, *, validate: bool,
                 known: Callable[[str], bool | None], proven: Callable[[str], bool],
                 audit: Callable[..., None]) -> None:
        self.gateway = gateway
        self.validate = validate
        self.known = known  # central knows the CP (None: the network view is not read yet)
        self.proven = proven  # the CP proved a credential before: only with a password
        self.audit = audit

    def admit(self, connection: ServerConnection, request: Request) -> Response | None:
        cp_id = charger_id(request.path)
        peer = _peer(connection)
        if not is_id(cp_id):
            return _refuse(connection, HTTPStatus.NOT_FOUND,
                           f"{printable(cp_id, 40)!r} is not a charge point id")
        if self.known(cp_id) is False:
            self.audit("refused", cp_id=cp_id, source=peer, code="unknown",
                       why="not in central's registry")
            log.warning("refused charger %s from %s: unknown id", cp_id, peer)
            return _unauthorized(connection, f"{cp_id} is not in central's registry")
        secret = self.gateway.secret_for(cp_id)
        if secret is None:
            if self.proven(cp_id):
                self.audit("refused", cp_id=cp_id, source=peer, code="auth",
                           why="proven before; the gateway holds no credential for it")
                return _unauthorized(connection, f"{cp_id} proved its credential before: "
                                     "give the gateway its credential")
            return None  # the open level: central decides at registration
        password = basic_password(request.headers, cp_id)
        if password is None or not auth.same(password, auth.ocpp_password(secret, cp_id)):
            self.audit("refused", cp_id=cp_id, source=peer, code="auth",
                       why="no password" if password is None else "wrong password")
            log.warning("refused charger %s from %s: %s", cp_id, peer,
                        "no password" if password is None else "wrong password")
            return _unauthorized(connection, "HTTP Basic: user is the charger id, password "
                                 f"from `ocpp-password {cp_id}` at central's console")
        return None

    async def serve(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        conn = Connection(ws, charger_id(ws.request.path), validate=self.validate)
        self.gateway.connected(conn)
        calls: asyncio.Queue[Call] = asyncio.Queue(QUEUED_CALLS)
        worker = asyncio.get_running_loop().create_task(self._work(conn, calls))
        log.info("%s: charger connected from %s", conn.cp_id, _peer(ws))
        try:
            async for text in ws:
                await self._frame(conn, calls, text)
        except ConnectionClosed:
            pass
        finally:
            worker.cancel()
            await self.gateway.disconnected(conn)

    async def _frame(self, conn: Connection, calls: asyncio.Queue[Call],
                     text: str | bytes) -> None:
        try:
            if isinstance(text, bytes):
                raise OcppError("ProtocolError", "OCPP-J frames are text, not binary")
            frame = ocppj.parse(text)
            if isinstance(frame, Call) and frame.unique_id in conn.replies:
                await conn.ws.send(conn.replies[frame.unique_id])
                return
            if isinstance(frame, Call):
                if self.validate:
                    ocppj.check(frame.action, frame.payload, unique_id=frame.unique_id)
                if calls.full():
                    raise OcppError("GenericError", "too many calls unanswered; wait for "
                                    "each answer", frame.unique_id)
                calls.put_nowait(frame)
            else:
                conn.answered(frame)
        except OcppError as exc:
            log.info("%s: answered %s", conn.cp_id, exc)
            await conn.ws.send(ocppj.encode_error(exc))

    async def _work(self, conn: Connection, calls: asyncio.Queue[Call]) -> None:
        while True:
            call = await calls.get()
            try:
                payload = await self.gateway.on_call(conn, call.action, call.payload)
                text = ocppj.encode_result(call.unique_id, payload)
            except OcppError as exc:
                exc.unique_id = call.unique_id
                text = ocppj.encode_error(exc)
            except (KeyError, TypeError, ValueError) as exc:  # only without --validate
                text = ocppj.encode_error(OcppError(
                    "FormationViolation", f"{call.action}: {type(exc).__name__} {exc}"[:200],
                    call.unique_id))
            conn.replies[call.unique_id] = text
            while len(conn.replies) > REMEMBERED:
                conn.replies.popitem(last=False)
            try:
                await conn.ws.send(text)
            except ConnectionClosed:
                return


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


def _refuse(connection: ServerConnection, status: HTTPStatus, text: str) -> Response:
    return connection.respond(status, text + "\n")


def _unauthorized(connection: ServerConnection, text: str) -> Response:
    response = connection.respond(HTTPStatus.UNAUTHORIZED, text + "\n")
    response.headers["WWW-Authenticate"] = 'Basic realm="evc", charset="UTF-8"'
    return response

"""evc web's routes: the public board and API, the operator's login and commands.

GET works for anyone and hides driver ids; an operator (a session cookie, or a script's
``Authorization: Bearer <name>.<key>``) sees them, the sessions and the tickets, and may
POST. Every command an operator POSTs becomes a console line, signed with the operator's
key and sent to central on operator_topic; central's answer is the HTTP answer. A cookie
session's POST must carry its CSRF token (``X-CSRF-Token``), and no POST is taken from
a page of another origin.
"""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from evc.errors import BusError
from evc.protocol import auth
from evc.protocol.ids import is_id
from evc.protocol.messages import OperatorAnswer
from evc.web.hub import Hub
from evc.web.logins import Login, parse_token
from evc.web.openapi import OPENAPI
from evc.web.server import STATIC, Handler, HttpError, Reply, Request, json_reply
from evc.web.state import ANSWER_SECONDS, WebState

log = logging.getLogger(__name__)

COOKIE = "evc_session"
STATUS_OF_CODE = {"bad_command": 400, "not_allowed": 403, "failed": 409, "expired": 504,
                  "bad_proof": 401, "unknown_operator": 401}


def _static(name: str) -> bytes:
    return (resources.files("evc.web.static") / name).read_bytes()


class WebApp:
    """The routes, on a hub of the state's documents and questions."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.files = {path: (_static(name), kind) for path, (name, kind) in STATIC.items()}
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        cp = r"/api/cps/(?P<cp_id>[^/]{1,64})"
        for method, pattern, handler in (
            ("GET", r"/api/board", self.board),
            ("GET", r"/api/cps", self.cps),
            ("GET", cp, self.cp),
            ("GET", r"/api/central", self.central),
            ("GET", r"/api/openapi\.json", self.openapi),
            ("GET", r"/api/me", self.me),
            ("POST", r"/api/login", self.login),
            ("POST", r"/api/logout", self.logout),
            ("GET", r"/api/sessions", self.sessions),
            ("GET", r"/api/tickets\.csv", self.tickets),
            ("GET", r"/api/audit", self.audit),
            ("POST", cp + r"/(?P<action>stop|resume)", self.stop_resume),
            ("POST", cp + r"/price", self.price),
            ("POST", r"/api/command", self.command),
        ):
            self.routes.append((method, re.compile(pattern + r"\Z"), handler))
        self.stream_path = "/api/events"

    def route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = False
        for m, pattern, handler in self.routes:
            found = pattern.match(path)
            if found:
                if m == method or (m == "GET" and method == "HEAD"):
                    return handler, found.groupdict()
                allowed = True
        if allowed:
            raise HttpError(405, f"{method} is not allowed on {path}")
        raise HttpError(404, f"no such page: {path}")

    # ------------------------------------------------------------------ who asks
    def who(self, req: Request) -> Login | None:
        """The operator behind ``req`` (a script's token, or a session cookie), or None."""
        header = req.headers.get("Authorization")
        if header:
            parsed = parse_token(header)
            if parsed is None:
                raise HttpError(401, "Authorization must be: Bearer <operator>.<key>")
            token = header.partition(" ")[2].strip()
            now = time.time()
            login = self.hub.ask(lambda st: st.logins.token(token, now))
            if login is None:  # not seen lately: central says whether it is right
                name, key = parsed
                answer = self._send(name, key, "whoami", req.client)
                if not answer.ok:
                    raise HttpError(401, "that token is not an operator's (or no longer)")
                login = self.hub.ask(lambda st: st.logins.confirm_token(token, name, key, now))
            return login
        cookie = _cookie(req)
        if not cookie:
            return None
        now = time.time()
        return self.hub.ask(lambda st: st.logins.session(cookie, now))

    def operator(self, req: Request, *, changes: bool = False) -> Login:
        login = self.who(req)
        if login is None:
            raise HttpError(401, "log in as an operator first")
        if changes and not req.headers.get("Authorization"):  # a cookie: CSRF applies
            _same_origin(req)
            if req.headers.get("X-CSRF-Token", "") != login.csrf:
                raise HttpError(403, "missing or wrong X-CSRF-Token (reload the page)")
        return login

    def stream_view(self, req: Request) -> bool:
        """The event stream's view: the operator's for a logged-in operator."""
        try:
            return self.who(req) is not None
        except HttpError:
            return False

    # ------------------------------------------------------------------ public
    def board(self, req: Request) -> Reply:
        operator = self.stream_view(req)
        return Reply(200, self.hub.ask(lambda st: st.board(operator))[1])

    def cps(self, req: Request) -> Reply:
        operator = self.stream_view(req)
        cps = self.hub.ask(lambda st: st.model.board(operator))["cps"]
        if req.arg("free") in ("1", "true", "yes"):
            cps = [c for c in cps if c.get("free")]
        return json_reply({"cps": cps})

    def cp(self, req: Request) -> Reply:
        cp_id = req.params["cp_id"]
        operator = self.stream_view(req)
        found = self.hub.ask(lambda st: st.model.cp(cp_id, operator=operator))
        if found is None:
            raise HttpError(404, f"no charge point {cp_id!r}")
        return json_reply(found)

    def central(self, req: Request) -> Reply:
        return json_reply(self.hub.ask(lambda st: st.model.central_doc()))

    def openapi(self, req: Request) -> Reply:
        return json_reply(OPENAPI)

    def me(self, req: Request) -> Reply:
        login = self.who(req)
        if login is None:
            return json_reply({"operator": None, "csrf": None})
        return json_reply({"operator": login.name, "csrf": login.csrf})

    # ------------------------------------------------------------------ logging in
    def login(self, req: Request) -> Reply:
        _same_origin(req)
        form = _form(req)
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        if not is_id(name) or not password or len(password) > 200:
            raise HttpError(400, "give an operator name and its password")
        now = time.time()
        wait = self.hub.ask(lambda st: st.logins.wait(req.client, name, now))
        if wait > 0:
            return Reply(429, _error(429, f"too many failed logins: try again in "
                                          f"{wait:.0f} s"),
                         headers={"Retry-After": str(int(wait) + 1)})
        key = auth.operator_key(name, password)
        answer = self._send(name, key, "whoami", req.client)
        if not answer.ok:
            self.hub.ask(lambda st: st.logins.failed(req.client, name, time.time()))
            log.warning("failed login as %s from %s", name, req.client)
            raise HttpError(401, "unknown operator or wrong password")
        cookie, login = self.hub.ask(lambda st: st.logins.open(name, key, time.time()))
        log.info("operator %s logged in from %s", name, req.client)
        return Reply(200, json.dumps({"operator": name, "csrf": login.csrf}).encode(),
                     headers={"Set-Cookie": f"{COOKIE}={cookie}; HttpOnly; SameSite=Strict; "
                                            "Path=/; Max-Age=28800"})

    def logout(self, req: Request) -> Reply:
        self.operator(req, changes=True)
        cookie = _cookie(req)
        self.hub.ask(lambda st: st.logins.close(cookie))
        return Reply(200, b'{"operator": null}', headers={
            "Set-Cookie": f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"})

    # ------------------------------------------------------------------ operators
    def sessions(self, req: Request) -> Reply:
        self.operator(req)
        status = req.arg("status")
        if status not in (None, "open", "closed"):
            raise HttpError(400, "status is open or closed")
        since = _since(req)
        cp_id, driver_id = req.arg("cp"), req.arg("driver")
        limit = _int(req.arg("limit"), 1000, 1, 10000)
        return json_reply(self.hub.ask(lambda st: st.model.sessions_doc(
            status, since, cp_id, driver_id, limit)))

    def tickets(self, req: Request) -> Reply:
        self.operator(req)
        since = _since(req)
        cp_id, driver_id = req.arg("cp"), req.arg("driver")
        text = self.hub.ask(lambda st: st.model.tickets_csv(since, cp_id, driver_id))
        return Reply(200, text.encode("utf-8"), "text/csv; charset=utf-8", headers={
            "Content-Disposition": 'attachment; filename="evc-tickets.csv"'})

    def audit(self, req: Request) -> Reply:
        self.operator(req)
        limit = _int(req.arg("limit"), 200, 1, 1000)
        event = req.arg("event")
        return json_reply(self.hub.ask(lambda st: st.model.audit_doc(limit, event)))

    def stop_resume(self, req: Request) -> Reply:
        login = self.operator(req, changes=True)
        return self._run(login, req, f"{req.params['action']} {_cp(req)}")

    def price(self, req: Request) -> Reply:
        login = self.operator(req, changes=True)
        form = _form(req)
        try:
            price = float(str(form.get("price", "")).replace(",", "."))
        except ValueError:
            raise HttpError(400, "price must be a number of €/kWh") from None
        return self._run(login, req, f"price {_cp(req)} {price!r}")

    def command(self, req: Request) -> Reply:
        login = self.operator(req, changes=True)
        line = str(_form(req).get("command", "")).strip()
        if not line or len(line) > 200 or not line.isprintable():
            raise HttpError(400, "command: one console line (see `help`)")
        return self._run(login, req, line)

    def _run(self, login: Login, req: Request, line: str) -> Reply:
        answer = self._send(login.name, login.key, line, req.client)
        if answer.ok:
            return json_reply({"ok": True, "command": line, "text": answer.text})
        status = STATUS_OF_CODE.get(answer.code, 409)
        return Reply(status, json.dumps({"error": {
            "status": status, "message": answer.text, "code": answer.code}},
            ensure_ascii=False).encode("utf-8"))

    def _send(self, name: str, key: str, line: str, source: str) -> OperatorAnswer:
        """``line`` as operator ``name``, to central; its answer (503 when none comes)."""
        answer: Future[OperatorAnswer] = Future()
        ready_by = time.monotonic() + 5.0  # just started: the answers' reader is joining
        while not self.hub.ask(lambda st: st.ready) and time.monotonic() < ready_by:
            time.sleep(0.1)
        self.hub.ask(lambda st: _command(st, name, key, line, source, answer))
        try:
            return answer.result(ANSWER_SECONDS)
        except FutureTimeout:
            raise HttpError(503, "central did not answer: it is unavailable (or only a "
                                 "standby is running)") from None
        except BusError as exc:
            raise HttpError(503, f"cannot reach Kafka: {exc}") from None


def _command(st: WebState, name: str, key: str, line: str, source: str,
             answer: Future[OperatorAnswer]) -> None:
    st.command(name, key, line, source, answer)


def _error(status: int, message: str) -> bytes:
    return json.dumps({"error": {"status": status, "message": message}}).encode("utf-8")


def _cookie(req: Request) -> str:
    raw = req.headers.get("Cookie")
    if not raw:
        return ""
    try:
        jar = SimpleCookie(raw)
    except CookieError:
        return ""
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else ""


def _same_origin(req: Request) -> None:
    """A browser names the page that sends a POST: it must be this server's."""
    origin = req.headers.get("Origin") or req.headers.get("Referer")
    if not origin:
        return  # not a browser's cross-site POST (browsers send Origin on every POST)
    host = req.headers.get("Host", "")
    if urlsplit(origin).netloc != host:
        raise HttpError(403, "a POST from another site's page is refused")


def _form(req: Request) -> dict[str, Any]:
    kind = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    try:
        if kind == "application/json":
            data = json.loads(req.body or b"{}")
            if not isinstance(data, dict):
                raise HttpError(400, "the body must be a JSON object")
            return data
        if kind == "application/x-www-form-urlencoded":
            return {k: v[-1] for k, v in parse_qs(req.body.decode("utf-8")).items()}
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "the body is not what its Content-Type says") from None
    if not req.body:
        return {}
    raise HttpError(415, "send JSON (application/json) or a form")


def _cp(req: Request) -> str:
    cp_id = req.params["cp_id"]
    if not is_id(cp_id):
        raise HttpError(404, f"no charge point {cp_id[:64]!r}")
    return cp_id


def _since(req: Request) -> float:
    text = req.arg("since")
    if not text:
        return 0.0
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S" if "T" in text
                                         else "%Y-%m-%d"))
    except ValueError:
        raise HttpError(400, "since: seconds since the epoch, or YYYY-MM-DD[THH:MM:SS]") \
            from None


def _int(text: str | None, default: int, low: int, high: int) -> int:
    if not text:
        return default
    try:
        return max(low, min(high, int(text)))
    except ValueError:
        raise HttpError(400, f"{text[:20]!r} is not a number") from None

"""Who is logged in to evc web, and who has failed too often (owned by the model's thread).

evc web keeps no passwords: a login derives the operator's key from the typed password
(``auth.operator_key``) and asks central (``whoami``, signed with it) whether it is
right. A session is a random cookie value mapped to that key, with its own CSRF token;
a script's token (``name.key``, printed by `add-operator`) is checked the same way once
and then remembered for a while. Failed logins are counted per source address and per
operator name: after ``MAX_FAILURES`` within ``WINDOW`` seconds, more are refused unseen.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from dataclasses import dataclass, field

SESSION_SECONDS = 8 * 3600.0
TOKEN_SECONDS = 300.0  # a script's token is asked of central again after this
MAX_FAILURES = 5
WINDOW = 300.0


@dataclass
class Login:
    name: str
    key: str  # the operator's key: signs its commands, checks central's answers
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    expires: float = 0.0


class Logins:
    def __init__(self) -> None:
        self.sessions: dict[str, Login] = {}  # sha256(cookie) -> login
        self.tokens: dict[str, Login] = {}  # sha256(token) -> a token central confirmed
        self.failures: dict[str, deque[float]] = {}  # "ip:<addr>" / "name:<name>" -> times

    # ------------------------------------------------------------------ rate limit
    def wait(self, source: str, name: str, now: float) -> float:
        """Seconds before another try from ``source`` or as ``name`` is heard (0: now)."""
        worst = 0.0
        for who in (f"ip:{source}", f"name:{name}"):
            times = self._recent(who, now)
            if len(times) >= MAX_FAILURES:
                worst = max(worst, times[0] + WINDOW - now)
        return worst

    def failed(self, source: str, name: str, now: float) -> None:
        for who in (f"ip:{source}", f"name:{name}"):
            self._recent(who, now).append(now)
        if len(self.failures) > 10000:  # a flood of names: forget the quiet ones
            for who in [w for w, t in self.failures.items() if not t or t[-1] < now - WINDOW]:
                del self.failures[who]

    def _recent(self, who: str, now: float) -> deque[float]:
        times = self.failures.setdefault(who, deque(maxlen=MAX_FAILURES))
        while times and times[0] < now - WINDOW:
            times.popleft()
        return times

    # ------------------------------------------------------------------ sessions
    def open(self, name: str, key: str, now: float) -> tuple[str, Login]:
        """A new session: its cookie value (given once) and its login."""
        cookie = secrets.token_urlsafe(32)
        login = Login(name, key, expires=now + SESSION_SECONDS)
        self.sessions[_h(cookie)] = login
        self._expire(now)
        return cookie, login

    def session(self, cookie: str, now: float) -> Login | None:
        login = self.sessions.get(_h(cookie)) if cookie else None
        if login is None or login.expires < now:
            return None
        return login

    def close(self, cookie: str) -> None:
        self.sessions.pop(_h(cookie), None)

    def token(self, token: str, now: float) -> Login | None:
        login = self.tokens.get(_h(token))
        return login if login is not None and login.expires >= now else None

    def confirm_token(self, token: str, name: str, key: str, now: float) -> Login:
        login = Login(name, key, expires=now + TOKEN_SECONDS)
        self.tokens[_h(token)] = login
        self._expire(now)
        return login

    def forget(self, name: str, key: str) -> None:
        """Central no longer takes ``key`` for ``name``: the sessions on it end."""
        for table in (self.sessions, self.tokens):
            for h in [h for h, login in table.items()
                      if login.name == name and login.key == key]:
                del table[h]

    def _expire(self, now: float) -> None:
        for table in (self.sessions, self.tokens):
            if len(table) > 1000:
                for h in [h for h, login in table.items() if login.expires < now]:
                    del table[h]


def _h(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_token(header: str) -> tuple[str, str] | None:
    """``Bearer <name>.<64 hex>`` -> (name, key); None if it is not one."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    name, sep, key = value.strip().rpartition(".")
    if not sep or not name or len(key) != 64:
        return None
    try:
        bytes.fromhex(key)
    except ValueError:
        return None
    return name, key.lower()

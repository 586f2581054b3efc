"""evc web's logins, without HTTP: sessions, tokens, and the failed-login limit."""

from __future__ import annotations

from evc.web.logins import MAX_FAILURES, SESSION_SECONDS, WINDOW, Logins, parse_token


def test_failures_hold_up_the_address_and_the_name_for_the_window():
    logins = Logins()
    for _ in range(MAX_FAILURES):
        assert logins.wait("127.0.0.3", "ana", 100.0) == 0
        logins.failed("127.0.0.3", "ana", 100.0)
    assert logins.wait("127.0.0.3", "bob", 101.0) > 0  # the address
    assert logins.wait("127.0.0.4", "ana", 101.0) > 0  # the name
    assert logins.wait("127.0.0.4", "bob", 101.0) == 0  # anyone else
    assert logins.wait("127.0.0.3", "ana", 100.0 + WINDOW + 1) == 0  # the window passed


def test_sessions_expire_and_end_only_with_their_own_key():
    logins = Logins()
    cookie, login = logins.open("ana", "k1", 0.0)
    assert logins.session(cookie, 10.0) is login and login.csrf
    assert logins.session("forged", 10.0) is None
    assert logins.session(cookie, SESSION_SECONDS + 1) is None
    cookie, _ = logins.open("ana", "k1", 0.0)
    logins.forget("ana", "someone else's guess")
    assert logins.session(cookie, 1.0) is not None
    logins.forget("ana", "k1")  # central refused that key: a new password
    assert logins.session(cookie, 1.0) is None


def test_a_scripts_token_is_name_dot_key():
    key = "ab" * 32
    assert parse_token(f"Bearer ana.{key}") == ("ana", key)
    assert parse_token(f"bearer op.with.dots.{key.upper()}") == ("op.with.dots", key)
    for bad in ("Basic YW5hOng=", "Bearer ana", f"Bearer .{key}", "Bearer ana." + "zz" * 32,
                "Bearer ana.abc"):
        assert parse_token(bad) is None, bad

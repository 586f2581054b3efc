"""One rule for identifiers and one for untrusted text, used by every door.

Charge point and driver ids arrive from the command line, the CSV registry, the
operator's console, TCP frames and Kafka records; all of them go through
``check_id``. Text that only people read (locations, reasons) goes through
``check_text`` on the way in and ``printable`` on the way to a terminal or log,
so nothing received can drive a terminal.
"""

from __future__ import annotations

import re
import unicodedata

from evc.errors import ProtocolError

ID_RULE = "1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TOKEN_RULE = "1-128 characters of letters, digits, '.', '_', ':', '@' or '-'"
_TOKEN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
MAX_TEXT = 200


def is_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(value: object, what: str = "id") -> str:
    """``value`` if it is a valid charge point or driver id; ProtocolError otherwise."""
    if not is_id(value):
        raise ProtocolError(f"bad {what} {printable(str(value), 40)!r}: {ID_RULE}")
    assert isinstance(value, str)
    return value


def check_token(value: object, what: str = "id") -> str:
    """Message, session and request ids (hex, or ``topic:partition:offset``)."""
    if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
        raise ProtocolError(f"bad {what} {printable(str(value), 40)!r}: {TOKEN_RULE}")
    return value


def check_text(value: str, what: str = "text", limit: int = MAX_TEXT) -> str:
    """Free text for people (a location, a reason): printable, at most ``limit`` chars."""
    if len(value) > limit:
        raise ProtocolError(f"{what} is longer than {limit} characters")
    if value.isascii() and value.isprintable():
        return value  # the common case, in one call: ASCII's printable are never category C
    if not all(_printable_char(c) for c in value):
        raise ProtocolError(f"{what} {printable(value, 40)!r} has control characters")
    return value


def _printable_char(c: str) -> bool:
    return c == " " or (c.isprintable() and unicodedata.category(c)[0] != "C")


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` made safe for a terminal: control characters escaped, length capped."""
    out = []
    for c in text[:limit]:
        out.append(c if _printable_char(c) else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}")
    return "".join(out) + ("…" if len(text) > limit else "")

"""Pairing codes: a short one-time code typed once turns into a CP's or driver's credential.

Central's operator types ``pair CP-07`` and reads a code such as ``7K2F-Q9XA``; the person
at the CP (or the driver) types it once. Both sides run SPAKE2 (the ``spake2`` package, as
magic-wormhole does) with the code as its password: each sends one group element, and both
get the same 32-byte key only if they used the same code. Nothing secret travels, an
eavesdropper learns nothing, and a fake central or a fake client can test one guess per
exchange, never offline. Key confirmation follows: the client proves the key first
(``client_confirm``); central checks it, then proves it back (``central_confirm``) and both
derive the credential (``credential``) from the key.

The code: 8 symbols of Crockford's base32 (no I, L, O or U; 40 bits), written in two
groups of four. Typing is forgiving: case, dashes and spaces do not matter, and O, I and L
read as 0, 1 and 1. Central lets a code live 10 minutes, once, for at most 5 tries.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from spake2 import SPAKE2_A, SPAKE2_B, SPAKEError

from evc.errors import ProtocolError

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_SYMBOLS = 8
_READS_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})


def new_code() -> str:
    """A fresh code, as the operator reads it: ``XXXX-XXXX``."""
    symbols = "".join(secrets.choice(ALPHABET) for _ in range(CODE_SYMBOLS))
    return f"{symbols[:4]}-{symbols[4:]}"


def normalize(text: str) -> str:
    """A typed code as central stores it (``XXXXXXXX``); ProtocolError when it is not one."""
    code = text.upper().replace("-", "").replace(" ", "").translate(_READS_AS)
    if len(code) != CODE_SYMBOLS or any(c not in ALPHABET for c in code):
        raise ProtocolError(f"a pairing code is {CODE_SYMBOLS} letters and digits, such as "
                            "7K2F-Q9XA")
    return code


def _ids(ident: str) -> tuple[bytes, bytes]:
    """SPAKE2's identities: who pairs (a CP or a driver) and with whom (its central)."""
    return (f"evc pairing v1 client {ident}".encode(),
            f"evc pairing v1 central {ident}".encode())


class PakeSide:
    """One side of one exchange: ``start`` gives the element to send, ``finish`` takes the
    other side's and gives the shared key (bytes); a garbage element is a ProtocolError."""

    def __init__(self, code: str, ident: str, *, central: bool) -> None:
        client_id, central_id = _ids(ident)
        password = normalize(code).encode("ascii")
        kind = SPAKE2_B if central else SPAKE2_A
        self._pake = kind(password, idA=client_id, idB=central_id)
        self.outbound: str = bytes(self._pake.start()).hex()

    def finish(self, inbound: str) -> bytes:
        try:
            return bytes(self._pake.finish(bytes.fromhex(inbound)))
        except SPAKEError as exc:
            raise ProtocolError(f"not a pairing message ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - spake2 raises several kinds on bad points
            raise ProtocolError(f"not a pairing message ({type(exc).__name__})") from None


def _mac(key: bytes, label: str, ident: str) -> str:
    return hmac.new(key, f"{label}\x1f{ident}".encode(), hashlib.sha256).hexdigest()


def client_confirm(key: bytes, ident: str) -> str:
    """What the CP's monitor or the driver sends to show it derived the same key."""
    return _mac(key, "evc pairing client confirms v1", ident)


def central_confirm(key: bytes, ident: str) -> str:
    """What central sends back once the client's confirmation checked out."""
    return _mac(key, "evc pairing central confirms v1", ident)


def credential(key: bytes, ident: str) -> str:
    """The credential both sides store: 64 hex characters, as ``auth.new_secret`` makes."""
    return _mac(key, "evc pairing credential v1", ident)


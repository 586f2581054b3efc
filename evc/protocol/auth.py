"""Proofs and MACs: HMAC-SHA256 from the standard library, in one place.

Every secret is 32 random bytes written as 64 hex characters. Nothing here is a home-made
cipher: a proof is ``HMAC-SHA256(secret, label | fields…)``, compared in constant time.

* A charge point proves its secret at registration without sending it: central sends a
  fresh nonce, the monitor answers ``register_proof``; central answers with
  ``central_proof`` (so a fake central is caught too) and both derive the CP's Kafka key
  for this registration (``kafka_key``), which never travels.
* Orders to an engine and the engine's readings carry ``mac`` under that Kafka key;
  a driver's requests carry ``mac`` under its own key, and so do the answers and tickets
  central sends it.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import hmac
import json
import secrets
from typing import Any, TypeVar

from evc.errors import ProtocolError

M = TypeVar("M")
KEY_LENGTH = 64  # hex characters


def new_secret() -> str:
    return secrets.token_hex(32)


def new_nonce() -> str:
    return secrets.token_hex(16)


def check_key(value: str, what: str = "key") -> str:
    """A secret or key as stored in a file: 64 hex characters."""
    text = value.strip()
    if len(text) != KEY_LENGTH or any(c not in "0123456789abcdef" for c in text.lower()):
        raise ProtocolError(f"{what} is not 64 hex characters")
    return text.lower()


def _hmac(key: str, label: str, *parts: str) -> str:
    msg = "\x1f".join((label, *parts)).encode("utf-8")
    return hmac.new(bytes.fromhex(key), msg, hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def register_proof(secret: str, cp_id: str, client_nonce: str, server_nonce: str) -> str:
    """What a monitor sends to prove it holds its CP's secret."""
    return _hmac(secret, "evc register v1", cp_id, client_nonce, server_nonce)


def central_proof(secret: str, cp_id: str, client_nonce: str, server_nonce: str) -> str:
    """What central sends back to prove it holds the same secret."""
    return _hmac(secret, "evc central v1", cp_id, client_nonce, server_nonce)


def kafka_key(secret: str, client_nonce: str, server_nonce: str) -> str:
    """The CP's key for its Kafka traffic during this registration (derived on both sides)."""
    return _hmac(secret, "evc kafka key v1", client_nonce, server_nonce)


def ocpp_password(secret: str, cp_id: str) -> str:
    """An OCPP charger's HTTP Basic password (security profile 1), derived from its CP's
    credential: 20 characters (OCPP's AuthorizationKey holds 16 to 20 bytes)."""
    raw = bytes.fromhex(_hmac(secret, "evc ocpp basic v1", cp_id))
    return base64.b32encode(raw).decode("ascii")[:20]


def driver_key(secret: str) -> str:
    """A driver's key for the MACs of its requests and of central's answers to it."""
    return _hmac(secret, "evc driver key v1")


OPERATOR_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # ~16 MB and ~50 ms per derivation


def operator_key(name: str, password: str) -> str:
    """An operator's key, from its password by scrypt (slow on purpose: what central
    stores cannot be turned back into the password by trying many). It signs the
    operator's commands and central's answers to them."""
    return hashlib.scrypt(password.encode("utf-8"), salt=b"evc operator v1:" + name.encode(),
                          dklen=32, maxmem=64 << 20, **OPERATOR_SCRYPT).hex()


def check_proof(secret: str, cp_id: str, nonce: str, ts: float) -> str:
    """What a monitor's health check carries, so its engine answers only its monitor."""
    return _hmac(secret, "evc health check v1", cp_id, nonce, repr(ts))


@functools.lru_cache(maxsize=65536)
def key_id(key: str) -> str:
    """A short public name for a key (which key signed a message), not the key."""
    return _hmac(key, "evc key id v1")[:16]


def _signed_bytes(wire: dict[str, Any]) -> bytes:
    body = {k: v for k, v in wire.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def sign(message: M, key: str) -> M:
    """``message`` with ``kid`` and ``mac`` set: HMAC-SHA256 over its canonical JSON
    (the JSON of the message with that ``kid`` and no ``mac``, as ``verify`` sees it)."""
    kid = key_id(key)
    wire = message.to_wire()  # type: ignore[attr-defined]
    wire.pop("mac", None)
    wire["kid"] = kid
    mac = hmac.new(bytes.fromhex(key), _signed_bytes(wire), hashlib.sha256).hexdigest()
    return dataclasses.replace(message, kid=kid, mac=mac)  # type: ignore[type-var]


def verify(message: Any, key: str) -> bool:
    """True when ``message`` carries a MAC under ``key`` over exactly what it says."""
    if not message.mac:
        return False
    wire = message.to_wire()
    expected = hmac.new(bytes.fromhex(key), _signed_bytes(wire), hashlib.sha256).hexdigest()
    return same(expected, message.mac)

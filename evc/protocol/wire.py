"""How a message becomes JSON and back: the ``Message`` base class, its field tables and
checks (every id, token and text field follows protocol.ids), ``from_wire`` and ``parse``.

The vocabulary itself (one frozen dataclass per TCP frame and Kafka record) is
protocol/messages.py; Python names are converted to wire keys only here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any, ClassVar, TypeVar, Union

from evc.errors import ProtocolError
from evc.protocol.ids import check_id, check_text, check_token

_ID_PREFIX = ""
_ID_COUNTER = itertools.count()


def _seed_ids() -> None:
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = os.urandom(8).hex()  # this process' random half
    _ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


_seed_ids()
os.register_at_fork(after_in_child=_seed_ids)  # a forked child is another process


def new_id() -> str:
    """A unique 32-hex-digit id: this process' random 64 bits and a counter.

    As unique as uuid4 for evc's purposes (ids never repeat within a process, and two
    processes share a prefix with probability 2**-64), without a system call per id:
    central makes one for every heartbeat it acknowledges."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def wire(name: str) -> Any:
    """Field metadata: the key used on the wire when it differs from the attribute."""
    return {"wire": name}


ID_FIELDS = frozenset({"cp_id", "driver_id", "operator"})
TOKEN_FIELDS = frozenset({"msg_id", "session_id", "request_id", "kid", "mac", "nonce", "site",
                          "proof", "key_id", "client_nonce", "server_nonce", "pake",
                          "confirm", "power_order"})
TEXT_FIELDS = frozenset({"location", "reason", "state", "detail", "central", "refused", "status",
                         "error_code", "info", "note", "via", "action", "arg"})

M = TypeVar("M", bound="Message")
_REGISTRY: dict[str, type[Message]] = {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Message:
    TYPE: ClassVar[str] = ""

    msg_id: str = dataclasses.field(default_factory=new_id)
    ts: float = dataclasses.field(default_factory=time.time)
    kid: str = ""  # which key signed it (protocol.auth), when signed
    mac: str = ""  # HMAC-SHA256 over the rest of the message, when signed

    def __post_init__(self) -> None:
        """Every id, token and text field follows protocol.ids, whoever built it."""
        for name, rule, optional in _table(type(self)).rules:
            value = getattr(self, name)
            if rule is check_id:
                check_id(value, name)
            elif rule is check_token:
                if value or not optional:
                    check_token(value, name)
            elif isinstance(value, str):
                check_text(value, name)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            if cls.TYPE in _REGISTRY:
                raise TypeError(f"duplicate message type {cls.TYPE!r}")
            _REGISTRY[cls.TYPE] = cls

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        for name, key in _table(type(self)).keys:
            value = getattr(self, name)
            if not value and (name == "kid" or name == "mac"):
                continue  # unsigned: the wire stays as it was
            if isinstance(value, Enum):
                value = value.value
            out[key] = value
        return out


def message_types() -> dict[str, type[Message]]:
    return dict(_REGISTRY)


Check = Callable[[Any, str], Any]


def _check(value: Any, hint: Any, where: str) -> Any:
    """Validate ``value`` against a field's type hint; return it converted."""
    return _checker(hint)(value, where)


def _checker(hint: Any) -> Check:
    """The function that validates (and converts) a value of type ``hint``: worked out
    once per field, not once per message (every frame and record is checked)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        optional = type(None) in args
        (inner,) = [a for a in args if a is not type(None)]
        check_inner = _checker(inner)

        def check_union(value: Any, where: str) -> Any:
            if value is None and optional:
                return None
            return check_inner(value, where)

        return check_union
    if isinstance(hint, type) and issubclass(hint, Enum):
        enum = hint

        def check_enum(value: Any, where: str) -> Any:
            try:
                return enum(value)
            except ValueError:
                allowed = ", ".join(str(m.value) for m in enum)
                raise ProtocolError(f"{where}: {value!r} is not one of {allowed}") from None

        return check_enum
    checker = _SIMPLE.get(hint)
    if checker is None:
        raise TypeError(f"unsupported field type {hint!r}")  # a bug in this module, not input
    return checker


def _check_bool(value: Any, where: str) -> Any:
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}: expected true/false, got {type(value).__name__}")
    return value


def _check_float(value: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{where}: expected a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ProtocolError(f"{where}: number too large") from None
    if not math.isfinite(number):
        raise ProtocolError(f"{where}: not a finite number")
    return number


def _check_int(value: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{where}: expected an integer, got {type(value).__name__}")
    if abs(value) > 2**63:
        raise ProtocolError(f"{where}: integer too large")
    return value


def _check_str(value: Any, where: str) -> Any:
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: expected a string, got {type(value).__name__}")
    return value


_SIMPLE: dict[Any, Check] = {bool: _check_bool, float: _check_float, int: _check_int,
                             str: _check_str}


def from_wire(obj: dict[str, Any]) -> Message:
    """A decoded JSON object -> its typed message; ProtocolError when it does not fit.

    ProtocolError is the only exception: whatever the object holds (huge or
    non-finite numbers, wrong types, deep nesting), nothing else escapes.
    """
    if not isinstance(obj, dict):
        raise ProtocolError(f"message is a JSON {type(obj).__name__}, not an object")
    try:
        return _from_wire(obj)
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError, AttributeError) as exc:
        raise ProtocolError(f"message does not fit its type ({type(exc).__name__})") from exc


def _from_wire(obj: dict[str, Any]) -> Message:
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("message has no string 'type'")
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    values: dict[str, Any] = {}
    for name, key, check, where, has_default in _table(cls).decode:
        if key not in obj:
            if has_default:
                continue
            raise ProtocolError(f"{kind}: missing key {key!r}")
        values[name] = check(obj[key], where)
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class _Table:
    """What encoding, decoding and checking a message class needs of its fields."""

    keys: tuple[tuple[str, str], ...]  # (field, wire key)
    decode: tuple[tuple[str, str, Check, str, bool], ...]  # (field, key, check, where, default)
    rules: tuple[tuple[str, Callable[..., str], bool], ...]  # (field, protocol.ids rule, "")


_TABLES: dict[type[Message], _Table] = {}


def _table(cls: type[Message]) -> _Table:
    """The class' field table, worked out once (``typing.get_type_hints`` and
    ``dataclasses.fields`` are costly, and every frame and record goes through here)."""
    table = _TABLES.get(cls)
    if table is None:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        keys = tuple((f.name, f.metadata.get("wire", f.name)) for f in fields)
        decode = tuple(
            (f.name, key, _checker(hints[f.name]), f"{cls.TYPE}.{key}",
             f.default is not dataclasses.MISSING
             or f.default_factory is not dataclasses.MISSING)
            for f, (_, key) in zip(fields, keys, strict=True))
        rules: list[tuple[str, Callable[..., str], bool]] = []
        for f in fields:
            if f.name in ID_FIELDS:
                rules.append((f.name, check_id, False))
            elif f.name in TOKEN_FIELDS:
                rules.append((f.name, check_token, f.default == ""))
            elif f.name in TEXT_FIELDS:
                rules.append((f.name, check_text, False))
        table = _TABLES[cls] = _Table(keys, decode, tuple(rules))
    return table


def parse(obj: dict[str, Any], expected: type[M]) -> M:
    """``from_wire`` that also insists on one message class."""
    message = from_wire(obj)
    if not isinstance(message, expected):
        raise ProtocolError(f"expected {expected.TYPE!r}, got {message.TYPE!r}")
    return message

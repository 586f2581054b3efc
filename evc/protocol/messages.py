"""Typed messages: one frozen dataclass per TCP frame and Kafka record.

Python names are converted to wire keys only here (``to_wire`` / ``from_wire``).
Every message carries ``type``, a unique ``msg_id`` and a timestamp ``ts``
(seconds since the epoch); where the seed fixes keys they are kept exactly:
a charge request has ``driver_id`` and ``cp_id_solicitado``, telemetry has
``cp_id``, ``driver_id``, ``consumo_kwh`` and ``importe_eur``.
docs/PROTOCOL.md documents each one.
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
from evc.protocol.codes import (
    CPState as CPState,
)
from evc.protocol.codes import (
    DenyCode as DenyCode,
)
from evc.protocol.codes import (
    EndReason as EndReason,
)
from evc.protocol.codes import (
    Health as Health,
)
from evc.protocol.codes import (
    RejectCode as RejectCode,
)
from evc.protocol.codes import (  # re-exported: every message module names them here
    StrEnum as StrEnum,
)
from evc.protocol.ids import check_id, check_text, check_token
from evc.protocol.topics import Delivery

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


ID_FIELDS = frozenset({"cp_id", "driver_id"})
TOKEN_FIELDS = frozenset({"msg_id", "session_id", "request_id", "kid", "mac", "nonce", "site",
                          "proof", "key_id", "client_nonce", "server_nonce", "pake",
                          "confirm", "power_order"})
TEXT_FIELDS = frozenset({"location", "reason", "state", "detail", "central", "refused"})

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


SEED_REQUEST_KEYS = frozenset({"driver_id", "cp_id_solicitado"})
SEED_TELEMETRY_KEYS = frozenset({"cp_id", "driver_id", "consumo_kwh", "importe_eur"})


def from_record(obj: Any, delivery: Delivery | None = None) -> Message:
    """A Kafka record's JSON -> its message, also in the seed's bare shapes.

    Clients written by others send exactly the seed's keys, without ``type``,
    ``msg_id`` or ``ts``: a request ``{driver_id, cp_id_solicitado}`` or a
    reading ``{cp_id, driver_id, consumo_kwh, importe_eur}`` (``final`` may
    follow). Their identity is the record's own (topic:partition:offset) and
    their time the record's Kafka timestamp, so redeliveries and expiry work
    as for evc's own messages. Numeric ids are read as their decimal text.
    """
    if isinstance(obj, dict) and "type" not in obj and delivery is not None:
        keys = set(obj)
        if keys == SEED_REQUEST_KEYS:
            kind = ChargeRequest.TYPE
        elif SEED_TELEMETRY_KEYS <= keys <= SEED_TELEMETRY_KEYS | {"final"}:
            kind = Telemetry.TYPE
        else:
            raise ProtocolError("record has no 'type' and is not one of the seed's shapes "
                                f"(keys: {', '.join(sorted(map(str, keys)))[:120]})")
        bare = {k: (str(v) if k in ("driver_id", "cp_id", "cp_id_solicitado")
                    and isinstance(v, int) and not isinstance(v, bool) else v)
                for k, v in obj.items()}
        return from_wire({**bare, "type": kind, "msg_id": delivery.ref,
                          "ts": delivery.timestamp or time.time()})
    return from_wire(obj)


def parse(obj: dict[str, Any], expected: type[M]) -> M:
    """``from_wire`` that also insists on one message class."""
    message = from_wire(obj)
    if not isinstance(message, expected):
        raise ProtocolError(f"expected {expected.TYPE!r}, got {message.TYPE!r}")
    return message


# --------------------------------------------------------------- TCP: monitor <-> central


@dataclasses.dataclass(frozen=True, kw_only=True)
class Register(Message):
    """Monitor -> central, first frame: "I am CP-01 at C/Italia 5"."""

    TYPE: ClassVar[str] = "register"
    cp_id: str
    location: str = ""
    health: Health = Health.OK
    nonce: str = ""  # the monitor's challenge to central (authenticated level)
    max_kw: float = 0.0  # the most its engine can supply (0: not said, central assumes 22)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Challenge(Message):
    """Central -> monitor: prove you hold this CP's secret (``nonce`` is central's)."""

    TYPE: ClassVar[str] = "challenge"
    cp_id: str
    nonce: str
    # False: central also serves this CP unproven (the open level, a CP never proven);
    # a monitor without the credential then answers a ``prove`` with no proof
    required: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class Prove(Message):
    """Monitor -> central: HMAC of both nonces under the CP's secret (protocol.auth)."""

    TYPE: ClassVar[str] = "prove"
    cp_id: str
    proof: str = ""  # none: this monitor holds no credential (accepted only if not required)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegisterAccepted(Message):
    TYPE: ClassVar[str] = "register_ok"
    cp_id: str
    location: str
    price_eur_kwh: float
    proof: str = ""  # central's own proof of the secret (authenticated level)
    key_id: str = ""  # the id of this registration's Kafka key (derived on both sides)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegisterRejected(Message):
    TYPE: ClassVar[str] = "register_rejected"
    cp_id: str
    reason: str
    code: RejectCode


@dataclasses.dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    TYPE: ClassVar[str] = "heartbeat"
    cp_id: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeartbeatAck(Message):
    TYPE: ClassVar[str] = "heartbeat_ack"
    cp_id: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class FaultReport(Message):
    """Monitor -> central: AVERÍA (engine answered KO or did not answer)."""

    TYPE: ClassVar[str] = "fault"
    cp_id: str
    reason: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecoveryReport(Message):
    """Monitor -> central: the engine answers OK again."""

    TYPE: ClassVar[str] = "recovered"
    cp_id: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class ErrorFrame(Message):
    """Sent before closing a connection that broke the protocol."""

    TYPE: ClassVar[str] = "error"
    reason: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineRefused(Message):
    """Monitor -> central: the CP's engine refused something (an unsigned or forged order,
    a check without proof); central shows it on the board and audits it."""

    TYPE: ClassVar[str] = "engine_refused"
    cp_id: str
    refused: str  # what, in words
    session_id: str = ""  # the start order's session, when it refused one


# --------------------------------------------------------------- TCP: pairing a CP


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairStart(Message):
    """Monitor -> central, instead of ``register``: SPAKE2's first element (protocol.pairing)
    under the code the operator gave for this CP."""

    TYPE: ClassVar[str] = "pair"
    cp_id: str
    pake: str  # hex


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairChallenge(Message):
    """Central -> monitor: central's SPAKE2 element (the try is counted against the code)."""

    TYPE: ClassVar[str] = "pair_challenge"
    cp_id: str
    pake: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairProve(Message):
    """Monitor -> central: the key confirmation (``pairing.client_confirm``)."""

    TYPE: ClassVar[str] = "pair_prove"
    cp_id: str
    confirm: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairAccepted(Message):
    """Central -> monitor: paired; central's own key confirmation. Both sides now store the
    credential ``pairing.credential`` derives; the monitor registers next."""

    TYPE: ClassVar[str] = "pair_ok"
    cp_id: str
    confirm: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairRejected(Message):
    TYPE: ClassVar[str] = "pair_rejected"
    cp_id: str
    reason: str


# --------------------------------------------------------------- TCP: monitor <-> engine


@dataclasses.dataclass(frozen=True, kw_only=True)
class HealthCheck(Message):
    """Monitor -> engine every second; also tells the engine which CP it is."""

    TYPE: ClassVar[str] = "health_check"
    cp_id: str
    nonce: str = ""  # with ``proof``: the check comes from the CP's own monitor
    proof: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineKey(Message):
    """Monitor -> engine after each registration: derive this registration's Kafka key
    from the CP's secret and these nonces; ``key_id`` says it was derived right."""

    TYPE: ClassVar[str] = "engine_key"
    cp_id: str
    client_nonce: str
    server_nonce: str
    key_id: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineOpen(Message):
    """Monitor -> engine after a registration central served unproven (the open level, no
    credential here): its orders come unsigned. An engine that was ever proven refuses it."""

    TYPE: ClassVar[str] = "engine_open"
    cp_id: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class HealthReply(Message):
    TYPE: ClassVar[str] = "health"
    cp_id: str
    status: Health
    state: str = ""
    refused: str = ""  # what the engine refused since the last reply (for central's board)
    max_kw: float = 0.0  # the most this engine can supply (--max-kw)
    session_id: str = ""  # the start order's session, when it refused one


# --------------------------------------------------------------- Kafka: requests_topic


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChargeRequest(Message):
    """Driver -> central. ``msg_id`` is the request id answers refer to."""

    TYPE: ClassVar[str] = "charge_request"
    driver_id: str
    cp_id: str = dataclasses.field(metadata=wire("cp_id_solicitado"))
    max_kw: float = 0.0  # the EV's own limit (the driver's --max-kw; 0: none)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EndRequest(Message):
    """Driver -> central: end my supply (the seed's FIN_SUMINISTRO)."""

    TYPE: ClassVar[str] = "end_request"
    driver_id: str
    cp_id: str
    session_id: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class DriverPair(Message):
    """Driver -> central: pair me with the code the operator gave (SPAKE2's first element).
    ``msg_id`` is the pairing's id: central's answers name it as ``request_id``."""

    TYPE: ClassVar[str] = "pair_request"
    driver_id: str
    pake: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class DriverPairProve(Message):
    """Driver -> central: the key confirmation of pairing ``request_id``."""

    TYPE: ClassVar[str] = "pair_prove_driver"
    driver_id: str
    request_id: str
    confirm: str


# --------------------------------------------------------------- Kafka: telemetry_topic


@dataclasses.dataclass(frozen=True, kw_only=True)
class Telemetry(Message):
    """Engine -> central (and the driver), every second of a supply and once at its end."""

    TYPE: ClassVar[str] = "telemetry"
    cp_id: str
    driver_id: str
    consumo_kwh: float
    importe_eur: float
    session_id: str = ""
    final: bool = False
    reason: str = ""
    kw: float | None = None  # the power being supplied now (0: waiting for power)
    power_order: str = ""  # the msg_id of the last power order obeyed (start or set_power)


# --------------------------------------------------------------- Kafka: control_topic


@dataclasses.dataclass(frozen=True, kw_only=True)
class StartSupply(Message):
    """Central -> engine: INICIAR_SUMINISTRO for a driver at a price."""

    TYPE: ClassVar[str] = "start_supply"
    cp_id: str
    driver_id: str
    session_id: str
    price_eur_kwh: float
    kw: float | None = None  # the supply's share of its site's limit (None: no limit)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EndSupply(Message):
    """Central -> engine: FIN_SUMINISTRO (or the end forced by a stop/fault/loss)."""

    TYPE: ClassVar[str] = "end_supply"
    cp_id: str
    session_id: str
    reason: EndReason


@dataclasses.dataclass(frozen=True, kw_only=True)
class SetPower(Message):
    """Central -> engine: supply this session at most ``kw`` (its share of the site's
    limit; 0: wait for power; None: no limit, the CP's maximum)."""

    TYPE: ClassVar[str] = "set_power"
    cp_id: str
    session_id: str
    kw: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class StopCP(Message):
    """Central -> engine: PARAR (out of order until resumed)."""

    TYPE: ClassVar[str] = "stop"
    cp_id: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResumeCP(Message):
    """Central -> engine: REANUDAR."""

    TYPE: ClassVar[str] = "resume"
    cp_id: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Authorization(Message):
    """Central -> driver: the answer to one ChargeRequest (``request_id``)."""

    TYPE: ClassVar[str] = "authorization"
    driver_id: str
    cp_id: str
    request_id: str
    authorized: bool
    reason: str = ""
    code: DenyCode | None = None  # why it was denied (None when authorized)
    session_id: str = ""
    price_eur_kwh: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ticket(Message):
    """Central -> driver: the final bill of one supply."""

    TYPE: ClassVar[str] = "ticket"
    driver_id: str
    cp_id: str
    session_id: str
    consumo_kwh: float
    importe_eur: float
    price_eur_kwh: float
    started_at: float
    ended_at: float
    reason: EndReason


@dataclasses.dataclass(frozen=True, kw_only=True)
class DriverPairChallenge(Message):
    """Central -> driver: central's SPAKE2 element for pairing ``request_id``."""

    TYPE: ClassVar[str] = "pair_challenge_driver"
    driver_id: str
    request_id: str
    pake: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class DriverPairResult(Message):
    """Central -> driver: paired (with central's key confirmation) or refused (why)."""

    TYPE: ClassVar[str] = "pair_result"
    driver_id: str
    request_id: str
    ok: bool
    confirm: str = ""
    reason: str = ""


# --------------------------------------------------------------- Kafka: network_topic


@dataclasses.dataclass(frozen=True, kw_only=True)
class CentralStatus(Message):
    """Central -> anyone, every second: central is there (key ``@central``)."""

    TYPE: ClassVar[str] = "central_status"
    central: str  # who: host name and process id
    started_at: float  # when it became the active central
    kafka_ok: bool = True
    epoch: int = 0  # how many times a central took the network over (grows by one each time)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CPStatus(Message):
    """Central -> anyone: a CP's public state (key: the CP id). Nothing about drivers."""

    TYPE: ClassVar[str] = "cp_status"
    cp_id: str
    location: str
    price_eur_kwh: float
    state: CPState
    detail: str = ""  # public words: why it is Averiado, "stopped by the operator", …
    last_seen: float = 0.0  # the monitor's last word (wall clock), for Desconectado
    proven: bool = False  # its monitor proved the CP's credential (orders and readings signed)
    site: str = ""  # the site whose power limit it shares ("" : none)
    kw: float = 0.0  # the power it supplies now


@dataclasses.dataclass(frozen=True, kw_only=True)
class SiteStatus(Message):
    """Central -> anyone: a site's power limit and load (key ``@site/<id>``)."""

    TYPE: ClassVar[str] = "site_status"
    site: str
    limit_kw: float | None = None  # None: no limit
    load_kw: float = 0.0  # what its supplies draw now
    supplies: int = 0
    waiting: int = 0  # supplies waiting for power


@dataclasses.dataclass(frozen=True, kw_only=True)
class Removed(Message):
    """A tombstone on a compacted topic (a record without value): ``key`` is gone.

    Never encoded: ``bus`` hands it to readers when it meets a tombstone.
    """

    key: str


TCP_CENTRAL_TYPES = (Register, Prove, Heartbeat, FaultReport, RecoveryReport, EngineRefused,
                     PairStart, PairProve)

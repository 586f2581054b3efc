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
import time
import types
import typing
import uuid
from enum import Enum
from typing import Any, ClassVar, TypeVar, Union

from evc.errors import ProtocolError


class StrEnum(str, Enum):
    """``enum.StrEnum`` for Python 3.10."""

    def __str__(self) -> str:
        return str(self.value)


class CPState(StrEnum):
    """A charge point as central shows it (the seed's words)."""

    ACTIVADO = "Activado"
    PARADO = "Parado"
    SUMINISTRANDO = "Suministrando"
    AVERIADO = "Averiado"
    DESCONECTADO = "Desconectado"


class Health(StrEnum):
    OK = "OK"
    KO = "KO"


class EndReason(StrEnum):
    """Why a supply ended (on telemetry marked final and on tickets)."""

    FINISHED = "finished"  # the driver asked to end it
    UNPLUGGED = "unplugged"  # ended at the charge point (engine key)
    STOPPED = "stopped"  # the operator stopped the CP
    FAULT = "fault"  # the engine failed
    DISCONNECTED = "disconnected"  # central lost the CP's monitor
    NO_ENGINE = "no_engine"  # the engine never started supplying
    REFUSED = "refused"  # the engine could not start (faulted, stopped or busy)
    TIME_LIMIT = "time_limit"  # the engine's maximum supply time was reached
    CENTRAL_RESTART = "central_restart"  # central restarted during the supply


def new_id() -> str:
    return uuid.uuid4().hex


def wire(name: str) -> Any:
    """Field metadata: the key used on the wire when it differs from the attribute."""
    return {"wire": name}


M = TypeVar("M", bound="Message")
_REGISTRY: dict[str, type[Message]] = {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Message:
    TYPE: ClassVar[str] = ""

    msg_id: str = dataclasses.field(default_factory=new_id)
    ts: float = dataclasses.field(default_factory=time.time)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            if cls.TYPE in _REGISTRY:
                raise TypeError(f"duplicate message type {cls.TYPE!r}")
            _REGISTRY[cls.TYPE] = cls

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Enum):
                value = value.value
            out[field.metadata.get("wire", field.name)] = value
        return out


def message_types() -> dict[str, type[Message]]:
    return dict(_REGISTRY)


def _check(value: Any, hint: Any, where: str) -> Any:
    """Validate ``value`` against a field's type hint; return it converted."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(value, inner, where)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in hint)
            raise ProtocolError(f"{where}: {value!r} is not one of {allowed}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"{where}: expected true/false, got {type(value).__name__}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"{where}: expected a number, got {type(value).__name__}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ProtocolError(f"{where}: not a finite number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"{where}: expected an integer, got {type(value).__name__}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ProtocolError(f"{where}: expected a string, got {type(value).__name__}")
        return value
    raise TypeError(f"unsupported field type {hint!r}")  # a bug in this module, not input


def from_wire(obj: dict[str, Any]) -> Message:
    """A decoded JSON object -> its typed message; ProtocolError when it does not fit."""
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("message has no string 'type'")
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        key = field.metadata.get("wire", field.name)
        if key not in obj:
            has_default = (
                field.default is not dataclasses.MISSING
                or field.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise ProtocolError(f"{kind}: missing key {key!r}")
        values[field.name] = _check(obj[key], hints[field.name], f"{kind}.{key}")
    return cls(**values)


def parse(obj: dict[str, Any], expected: type[M]) -> M:
    """``from_wire`` that also insists on one message class."""
    message = from_wire(obj)
    if not isinstance(message, expected):
        raise ProtocolError(f"expected {expected.TYPE!r}, got {message.TYPE!r}")
    return message


def _text_id(value: str, what: str) -> str:
    if not value or len(value) > 64 or any(c.isspace() for c in value):
        raise ProtocolError(f"bad {what} {value!r}: 1-64 characters, no spaces")
    return value


# --------------------------------------------------------------- TCP: monitor <-> central


@dataclasses.dataclass(frozen=True, kw_only=True)
class Register(Message):
    """Monitor -> central, first frame: "I am CP-01 at C/Italia 5"."""

    TYPE: ClassVar[str] = "register"
    cp_id: str
    location: str = ""
    health: Health = Health.OK

    def __post_init__(self) -> None:
        _text_id(self.cp_id, "cp_id")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegisterAccepted(Message):
    TYPE: ClassVar[str] = "register_ok"
    cp_id: str
    location: str
    price_eur_kwh: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegisterRejected(Message):
    TYPE: ClassVar[str] = "register_rejected"
    cp_id: str
    reason: str
    code: str = ""  # "unknown" (not in the registry: give up) or "duplicate" (retry later)


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


# --------------------------------------------------------------- TCP: monitor <-> engine


@dataclasses.dataclass(frozen=True, kw_only=True)
class HealthCheck(Message):
    """Monitor -> engine every second; also tells the engine which CP it is."""

    TYPE: ClassVar[str] = "health_check"
    cp_id: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class HealthReply(Message):
    TYPE: ClassVar[str] = "health"
    cp_id: str
    status: Health
    state: str = ""


# --------------------------------------------------------------- Kafka: requests_topic


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChargeRequest(Message):
    """Driver -> central. ``msg_id`` is the request id answers refer to."""

    TYPE: ClassVar[str] = "charge_request"
    driver_id: str
    cp_id: str = dataclasses.field(metadata=wire("cp_id_solicitado"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class EndRequest(Message):
    """Driver -> central: end my supply (the seed's FIN_SUMINISTRO)."""

    TYPE: ClassVar[str] = "end_request"
    driver_id: str
    cp_id: str
    session_id: str


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


# --------------------------------------------------------------- Kafka: control_topic


@dataclasses.dataclass(frozen=True, kw_only=True)
class StartSupply(Message):
    """Central -> engine: INICIAR_SUMINISTRO for a driver at a price."""

    TYPE: ClassVar[str] = "start_supply"
    cp_id: str
    driver_id: str
    session_id: str
    price_eur_kwh: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class EndSupply(Message):
    """Central -> engine: FIN_SUMINISTRO (or the end forced by a stop/fault/loss)."""

    TYPE: ClassVar[str] = "end_supply"
    cp_id: str
    session_id: str
    reason: EndReason


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


TCP_CENTRAL_TYPES = (Register, Heartbeat, FaultReport, RecoveryReport)

"""Typed messages: one frozen dataclass per TCP frame and Kafka record.

How each becomes JSON and back (``to_wire`` / ``from_wire``) is protocol/wire.py.
Every message carries ``type``, a unique ``msg_id`` and a timestamp ``ts``
(seconds since the epoch); where the seed fixes keys they are kept exactly:
a charge request has ``driver_id`` and ``cp_id_solicitado``, telemetry has
``cp_id``, ``driver_id``, ``consumo_kwh`` and ``importe_eur``.
docs/PROTOCOL.md documents each one.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

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
from evc.protocol.topics import Delivery
from evc.protocol.wire import (  # re-exported: the machinery is named here too
    ID_FIELDS as ID_FIELDS,
)
from evc.protocol.wire import (
    TEXT_FIELDS as TEXT_FIELDS,
)
from evc.protocol.wire import (
    TOKEN_FIELDS as TOKEN_FIELDS,
)
from evc.protocol.wire import (
    Message as Message,
)
from evc.protocol.wire import (
    from_wire as from_wire,
)
from evc.protocol.wire import (
    message_types as message_types,
)
from evc.protocol.wire import (
    new_id as new_id,
)
from evc.protocol.wire import (
    parse as parse,
)
from evc.protocol.wire import (
    wire as wire,
)

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
    via: str = ""  # "ocpp": an OCPP charger behind `evc ocpp` ("": an evc monitor)


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
class ChargerStatus(Message):
    """Gateway -> central: what an OCPP charger says of itself (its StatusNotification:
    Available, Preparing, Charging, SuspendedEV, Finishing, Faulted, …), for the board."""

    TYPE: ClassVar[str] = "charger_status"
    cp_id: str
    status: str
    error_code: str = ""  # OCPP ChargePointErrorCode (NoError when fine)
    info: str = ""  # the charger's own words (info, vendorErrorCode)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChargerNote(Message):
    """Gateway -> central: the charger's answer to an operator's OCPP command (its
    ``ocpp CP reset soft`` and the like), for the board's event line and the audit."""

    TYPE: ClassVar[str] = "charger_note"
    cp_id: str
    note: str


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
    # A card presented at an OCPP charger: the gateway asks for the card's driver, and
    # signs the request with the CP's key instead of the driver's (docs/OCPP.md)
    card: bool = False


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
    limit; 0: wait for power; None: no limit, the CP's maximum). ``seq`` numbers a
    session's power orders in the order central decided them: an engine obeys only a
    newer one than it has (an earlier share sent again after a crash never comes back)."""

    TYPE: ClassVar[str] = "set_power"
    cp_id: str
    session_id: str
    kw: float | None = None
    seq: int = 0


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
class ChargerCommand(Message):
    """Central -> an OCPP charger's gateway: an operator's OCPP command (``ocpp CP-07 reset
    soft``): ``action`` is Reset, TriggerMessage, GetConfiguration or ChangeConfiguration,
    ``arg`` its argument (soft/hard, a message to trigger, a key, ``key=value``)."""

    TYPE: ClassVar[str] = "charger_command"
    cp_id: str
    action: str
    arg: str = ""


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
class StandbyStatus(Message):
    """A standby central -> anyone, every 2 s while it is one (key ``@standby/<who>``; a
    tombstone when it stops or takes over): a standby is there to take over."""

    TYPE: ClassVar[str] = "standby_status"
    central: str  # who: host name, port and process id
    active: str = ""  # the active central it follows, as far as it knows


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
    via: str = ""  # "ocpp": an OCPP charger behind a gateway
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
class OperatorCommand(Message):
    """An operator's client (evc web) -> central, on operator_topic (key: the operator):
    one console command, signed with the operator's key (``auth.operator_key``).
    ``msg_id`` is the request id its answer names; ``source`` is where the operator is,
    as the client saw it (for the audit)."""

    TYPE: ClassVar[str] = "operator_command"
    operator: str
    command: str
    source: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperatorAnswer(Message):
    """Central -> the operator's client: what the command did, in the console's words
    (``ok`` false: refused, ``code`` says why). Signed with the operator's key whenever
    the command proved it."""

    TYPE: ClassVar[str] = "operator_answer"
    operator: str
    request_id: str
    ok: bool
    text: str = ""
    code: str = ""  # unknown_operator, bad_proof, expired, not_allowed, bad_command, failed


@dataclasses.dataclass(frozen=True, kw_only=True)
class Removed(Message):
    """A tombstone on a compacted topic (a record without value): ``key`` is gone.

    Never encoded: ``bus`` hands it to readers when it meets a tombstone.
    """

    key: str


TCP_CENTRAL_TYPES = (Register, Prove, Heartbeat, FaultReport, RecoveryReport, EngineRefused,
                     PairStart, PairProve, ChargerStatus, ChargerNote)

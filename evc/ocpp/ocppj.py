"""OCPP-J 1.6: the three frames, their checks and the CALLERROR codes (pure: no I/O).

A frame is a JSON array: ``[2, id, action, payload]`` (CALL), ``[3, id, payload]``
(CALLRESULT) or ``[4, id, code, description, details]`` (CALLERROR). ``parse`` turns text
into one of them or raises ``OcppError`` carrying the code the specification gives
(section 4.2.3 of "OCPP-J 1.6"): a frame that is not OCPP-J is a ProtocolError, a CALL
for an action this side does not know is NotImplemented. ``check`` holds a payload
against the action's JSON schema, the Open Charge Alliance's own (shipped inside the
``ocpp`` package, read once per action), and maps what breaks it to the specification's
codes: a wrong type or a string too long is a TypeConstraintViolation, a missing field an
OccurenceConstraintViolation (1.6 spells it so), a value outside its enumeration a
PropertyConstraintViolation, an unknown field or a payload that is no object a
FormationViolation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError

CALL, CALLRESULT, CALLERROR = 2, 3, 4
NO_ID = "-1"  # the unique id answered when a frame has none that can be read
MAX_ID = 36  # a unique id is at most 36 characters

# What a charge point may ask of a central system in OCPP 1.6 (Core and the profiles'
# CALLs that go that way, plus the security extension's): anything else is NotImplemented.
CHARGER_ACTIONS = frozenset({
    "Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification",
    "FirmwareStatusNotification", "Heartbeat", "MeterValues", "StartTransaction",
    "StatusNotification", "StopTransaction", "LogStatusNotification",
    "SecurityEventNotification", "SignCertificate", "SignedFirmwareStatusNotification",
})


class OcppError(Exception):
    """A CALLERROR to answer: ``code`` is one of the specification's."""

    def __init__(self, code: str, description: str, unique_id: str = NO_ID,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description[:255]
        self.unique_id = unique_id
        self.details = details or {}


@dataclass(frozen=True)
class Call:
    unique_id: str
    action: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CallResult:
    unique_id: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CallError:
    unique_id: str
    code: str
    description: str = ""
    details: dict[str, Any] = field(default_factory=dict)


Frame = Call | CallResult | CallError


def parse(text: str | bytes, actions: frozenset[str] = CHARGER_ACTIONS) -> Frame:
    """One received frame; OcppError (ProtocolError, NotImplemented) when it cannot be."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are
        raise OcppError("ProtocolError", "the frame is not JSON") from None
    if not isinstance(obj, list) or not obj:
        raise OcppError("ProtocolError", "an OCPP-J frame is a JSON array")
    kind = obj[0]
    unique_id = obj[1] if len(obj) > 1 and _good_id(obj[1]) else NO_ID
    if kind not in (CALL, CALLRESULT, CALLERROR) or isinstance(kind, bool):
        raise OcppError("ProtocolError", f"message type {str(kind)[:20]!r} is not 2, 3 or 4",
                        unique_id)
    if unique_id == NO_ID:
        raise OcppError("ProtocolError", f"the unique id must be a string of 1 to {MAX_ID} "
                        "characters")
    if kind == CALL:
        if len(obj) != 4 or not isinstance(obj[2], str):
            raise OcppError("ProtocolError", "a CALL is [2, id, action, payload]", unique_id)
        action = obj[2]
        if action not in actions:
            raise OcppError("NotImplemented", f"unknown action {action[:40]!r}", unique_id)
        if not isinstance(obj[3], dict):
            raise OcppError("FormationViolation", "the payload is not a JSON object",
                            unique_id)
        return Call(unique_id, action, obj[3])
    if kind == CALLRESULT:
        if len(obj) != 3 or not isinstance(obj[2], dict):
            raise OcppError("ProtocolError", "a CALLRESULT is [3, id, payload]", unique_id)
        return CallResult(unique_id, obj[2])
    if len(obj) != 5 or not isinstance(obj[2], str) or not isinstance(obj[3], str) \
            or not isinstance(obj[4], dict):
        raise OcppError("ProtocolError", "a CALLERROR is [4, id, code, description, details]",
                        unique_id)
    return CallError(unique_id, obj[2], obj[3], obj[4])


def _good_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID


@cache
def _validator(name: str) -> Draft4Validator:
    schema = resources.files("ocpp.v16").joinpath("schemas", f"{name}.json").read_text("utf-8")
    return Draft4Validator(json.loads(schema))


ERROR_OF = {
    "type": "TypeConstraintViolation",
    "maxLength": "TypeConstraintViolation",
    "required": "OccurenceConstraintViolation",
    "minItems": "OccurenceConstraintViolation",
    "maxItems": "OccurenceConstraintViolation",
    "enum": "PropertyConstraintViolation",
    "additionalProperties": "FormationViolation",
}


def check(action: str, payload: dict[str, Any], *, response: bool = False,
          unique_id: str = NO_ID) -> None:
    """``payload`` holds to the action's schema (its request's, or with ``response`` its
    answer's); OcppError with the specification's code otherwise."""
    try:
        validator = _validator(action + ("Response" if response else ""))
    except (OSError, ValueError) as exc:
        raise OcppError("NotImplemented", f"no schema for {action}", unique_id) from exc
    error = next(iter(validator.iter_errors(payload)), None)
    if error is not None:
        raise OcppError(ERROR_OF.get(str(error.validator), "PropertyConstraintViolation"),
                        _words(error), unique_id)


def _words(error: ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path)
    return (f"{where}: " if where else "") + str(error.message)[:200]


def encode_call(unique_id: str, action: str, payload: dict[str, Any]) -> str:
    return json.dumps([CALL, unique_id, action, payload], separators=(",", ":"))


def encode_result(unique_id: str, payload: dict[str, Any]) -> str:
    return json.dumps([CALLRESULT, unique_id, payload], separators=(",", ":"))


def encode_error(error: OcppError) -> str:
    return json.dumps([CALLERROR, error.unique_id, error.code, error.description,
                       error.details], separators=(",", ":"))

"""What an OCPP charger's words mean to evc (pure: no I/O): its meter readings in kWh and
kW, its StopTransaction reasons as a ticket's reason, its statuses as faults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evc.protocol.codes import EndReason

ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"

REASONS = {
    "EVDisconnected": EndReason.UNPLUGGED,
    "Local": EndReason.LOCAL,
    "PowerLoss": EndReason.POWER_LOSS,
    "EmergencyStop": EndReason.EMERGENCY_STOP,
    "HardReset": EndReason.RESET,
    "SoftReset": EndReason.RESET,
    "Reboot": EndReason.RESET,
    "DeAuthorized": EndReason.DEAUTHORIZED,
    "UnlockCommand": EndReason.OTHER,
    "Other": EndReason.OTHER,
}
"""StopTransaction's reason -> the ticket's (``Remote`` is whatever central decided)."""


def end_reason(ocpp_reason: str | None, decided: EndReason | None) -> EndReason:
    """The ticket's reason: central's when it ordered the end, else the charger's
    (OCPP's default reason is Local)."""
    if decided is not None:
        return decided
    if ocpp_reason == "Remote":
        return EndReason.FINISHED
    return REASONS.get(ocpp_reason or "Local", EndReason.OTHER)


@dataclass(frozen=True)
class Reading:
    wh: float | None = None  # the energy register, in Wh
    kw: float | None = None  # the power drawn, in kW


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) < 1e15 else None  # not NaN, not absurd


def reading(meter_values: list[dict[str, Any]]) -> Reading:
    """The newest energy register and power among a MeterValues' (or a StopTransaction's
    transactionData) samples; a unit of kWh or kW is turned into Wh and kW."""
    wh = kw = None
    for value in meter_values:
        for sample in value.get("sampledValue", []):
            measurand = sample.get("measurand", ENERGY)
            number = _number(sample.get("value"))
            if number is None or sample.get("phase"):
                continue  # per-phase figures are parts of the total
            unit = sample.get("unit", "Wh" if measurand == ENERGY else "W")
            if measurand == ENERGY and unit in ("Wh", "kWh"):
                wh = number * 1000 if unit == "kWh" else number
            elif measurand == POWER and unit in ("W", "kW"):
                kw = number if unit == "kW" else number / 1000
    return Reading(wh, kw)


FAULTED = "Faulted"

"""The codes of the wire: a charge point's states (the seed's words) and why things
happen. People read the prose beside them; tests and other programs read these."""

from __future__ import annotations

from enum import Enum


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

    @classmethod
    def of(cls, *, connected: bool, faulted: bool, stopped: bool, supplying: bool) -> CPState:
        """The one ladder from a CP's facts to its state: no live monitor, a fault, the
        operator's stop and a running supply, in that order of precedence."""
        if not connected:
            return cls.DESCONECTADO
        if faulted:
            return cls.AVERIADO
        if stopped:
            return cls.PARADO
        if supplying:
            return cls.SUMINISTRANDO
        return cls.ACTIVADO


class Health(StrEnum):
    OK = "OK"
    KO = "KO"


DEFAULT_SPEED = 3600 * 0.5 / 22
"""The simulation clock's default (simulated seconds per real second, ~81.8): a reading
each real second of a 22-kW supply adds 0.5 kWh."""
DEFAULT_MAX_KW = 22.0  # a CP that does not say its maximum


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
    # Reasons an OCPP charger gives in StopTransaction (docs/OCPP.md maps each one)
    LOCAL = "local"  # stopped at the charger (its button, or the card presented again)
    POWER_LOSS = "power_loss"  # the charger lost its power supply
    EMERGENCY_STOP = "emergency_stop"  # the charger's emergency stop button
    RESET = "reset"  # the charger rebooted or was reset
    DEAUTHORIZED = "deauthorized"  # the card was refused after the start
    OTHER = "other"  # any other reason the charger gave


class RejectCode(StrEnum):
    """Why central refused a monitor's registration (``register_rejected.code``)."""

    UNKNOWN = "unknown"  # the CP is not in the registry: the monitor gives up
    DUPLICATE = "duplicate"  # another live monitor holds the id: retry later
    PROTOCOL = "protocol"  # spoke before registering, or for another CP
    AUTH = "auth"  # no valid proof of the CP's secret (refused, audited)
    STANDBY = "standby"  # this central is the standby: register with the active one


class DenyCode(StrEnum):
    """Why a charge request was denied (``authorization.code``; prose in ``reason``)."""

    EXPIRED = "expired"  # older than the request time-to-live
    UNKNOWN_CP = "unknown_cp"  # not in the registry
    DRIVER_BUSY = "driver_busy"  # this driver already has a supply running
    DISCONNECTED = "disconnected"  # the CP's monitor is not connected
    FAULTED = "faulted"  # the CP is out of service (Averiado)
    STOPPED = "stopped"  # stopped by the operator (Parado)
    BUSY = "busy"  # the CP is supplying someone else
    UNKNOWN_DRIVER = "unknown_driver"  # not registered in central
    BAD_PROOF = "bad_proof"  # the request does not carry the driver's valid MAC

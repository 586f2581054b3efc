"""What central believes: the one place that decides whether a charge request is
authorized, whether a driver's request is its own, and whether a reading can be true
(the brain calls these with itself, on its thread)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from evc.protocol import auth
from evc.protocol.messages import ChargeRequest, CPState, DenyCode, EndRequest, Telemetry
from evc.store import DRIVERS

if TYPE_CHECKING:
    from evc.central.brain import Brain
    from evc.central.model import Session


def refusal(brain: Brain, req: ChargeRequest) -> tuple[DenyCode, str] | None:
    """Why ``req`` cannot be authorized, or None: the only place that decides.

    A request's age does not count the time central or Kafka was away:
    requests made meanwhile are answered when they return.
    """
    proof = driver_proof(brain, req)
    if proof is not None:
        return proof
    age = brain.age(req.ts)
    if age > brain.settings.request_ttl:
        return DenyCode.EXPIRED, f"request expired ({age:.0f} s old)"
    cp = brain.cps.get(req.cp_id)
    if cp is None:
        return DenyCode.UNKNOWN_CP, f"unknown charge point {req.cp_id}"
    running = brain.running_session_of(req.driver_id)
    if running is not None:
        return (DenyCode.DRIVER_BUSY, f"driver {req.driver_id} already has a supply "
                f"running at {running.cp_id}")
    state = cp.state
    if state is CPState.ACTIVADO:
        return None
    return {
        CPState.DESCONECTADO: (DenyCode.DISCONNECTED, f"{cp.cp_id} is disconnected"),
        CPState.AVERIADO: (DenyCode.FAULTED, f"{cp.cp_id} is out of service (fault)"),
        CPState.PARADO: (DenyCode.STOPPED,
                         f"{cp.cp_id} is stopped by the operator (out of order)"),
        CPState.SUMINISTRANDO: (DenyCode.BUSY, f"{cp.cp_id} is busy"),
    }[state]

def driver_proof(brain: Brain, req: ChargeRequest | EndRequest) -> tuple[DenyCode, str] | None:
    """Why ``req`` is not the driver's own, or None. A driver with a credential signs,
    whatever the level; the open level also serves drivers that have none."""
    if isinstance(req, ChargeRequest) and req.card:
        return card_proof(brain, req)
    secret = brain.drivers.get(req.driver_id)
    how = (f"pair this driver: type `pair {req.driver_id}` at central's console, then "
           f"run `evc driver <kafka> {req.driver_id} --pair <code>`")
    if secret is None and brain.settings.secure:
        return (DenyCode.UNKNOWN_DRIVER,
                f"driver {req.driver_id} is not registered in central; {how}")
    if secret:
        if not auth.verify(req, auth.driver_key(secret)):
            return (DenyCode.BAD_PROOF, f"the request of {req.driver_id} does not carry "
                    f"its valid signature; {how}")
        if req.driver_id not in brain.proven_drivers:
            brain.proven_drivers.add(req.driver_id)
            brain.store.put(DRIVERS, {"driver_id": req.driver_id, "proven": True})
    elif brain.settings.secure:
        return (DenyCode.BAD_PROOF, f"driver {req.driver_id}'s credential was revoked; "
                f"{how}")
    return None


def card_proof(brain: Brain, req: ChargeRequest) -> tuple[DenyCode, str] | None:
    """Why a card presented at an OCPP charger is not to be served, or None. The card names
    a driver in central's registry, whatever the level (a local authorization list), and
    the request comes from the charger's own gateway: signed with the CP's key wherever
    its readings must be."""
    cp = brain.cps.get(req.cp_id)
    if cp is None:
        return None  # refused as an unknown CP
    if cp.via != "ocpp":
        return (DenyCode.BAD_PROOF, f"a card request from {cp.cp_id}, which is not an OCPP "
                "charger")
    if brain.settings.secure or cp.proven:
        key = cp.keys.get(req.kid) if req.kid else None
        if key is None or not auth.verify(req, key):
            return (DenyCode.BAD_PROOF, f"a card request for {cp.cp_id} not signed with "
                    "its key")
    if req.driver_id not in brain.drivers:
        return (DenyCode.UNKNOWN_DRIVER, f"card {req.driver_id} is not a registered driver "
                f"(register it: `add-driver {req.driver_id}`)")
    return None


def implausible(brain: Brain, t: Telemetry, session: Session) -> str | None:
    """Why a reading cannot be believed, or None (checked whatever the level)."""
    cp = brain.cps.get(t.cp_id)
    if brain.settings.secure or (cp is not None and cp.proven):
        key = cp.keys.get(t.kid) if cp is not None and t.kid else None
        if key is None or not auth.verify(t, key):
            return "not signed with the CP's key"
    if t.consumo_kwh < 0:
        return f"negative energy ({t.consumo_kwh} kWh)"
    elapsed = max(0.0, time.time() - session.started_at)
    rate = brain.settings.max_rate
    if cp is not None:  # a fast simulation clock supplies faster
        rate = max(rate, cp.max_kw * brain.settings.speed / 3600 * 1.5)
    most = rate * (elapsed + 2.0)  # a margin of two readings
    if t.consumo_kwh > most:
        return (f"{t.consumo_kwh:.2f} kWh in {elapsed:.0f} s is more than the CP can "
                f"supply ({most:.2f} kWh)")
    return None

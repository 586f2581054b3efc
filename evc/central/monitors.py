"""The rules of central's TCP side: its monitors' registrations, heartbeats, faults,
recoveries and lost connections (the brain calls these with itself, on its thread).

At the authenticated level central answers a ``register`` with a ``challenge`` (its
nonce); the monitor proves its CP's secret over both nonces, central proves it back in
``register_ok`` and both derive this registration's Kafka key. At the open level a
known, free CP is accepted at once. Every refusal is said on the board and audited.
A registered connection serves its own CP only.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from evc.central.events import Heartbeats, MonitorFrame
from evc.central.model import PendingRegistration, Wait
from evc.ports import assert_never
from evc.protocol import auth
from evc.protocol.messages import (
    Challenge,
    EndReason,
    FaultReport,
    Health,
    Heartbeat,
    Message,
    Prove,
    RecoveryReport,
    Register,
    RegisterAccepted,
    RegisterRejected,
    RejectCode,
    ResumeCP,
    StopCP,
)

if TYPE_CHECKING:
    from evc.central.brain import Brain
    from evc.central.model import ChargePoint


def on_frame(brain: Brain, event: MonitorFrame) -> None:
    msg = event.message
    cp_id = brain.by_conn.get(event.conn_id)
    if cp_id is None:  # not registered: a register, then the proof, and nothing else
        pending = brain.challenges.pop(event.conn_id, None)
        match msg:
            case Prove() if pending is not None and msg.cp_id == pending.cp_id:
                on_proof(brain, event.conn_id, pending, msg)
            case Register() if pending is None:
                on_register(brain, event.conn_id, event.peer, msg)
            case _:
                brain.link.close_connection(
                    event.conn_id, "spoke before registering",
                    RegisterRejected(cp_id=msg.cp_id, reason="register first",
                                     code=RejectCode.PROTOCOL))
        return
    cp = brain.cps[cp_id]
    said = "" if isinstance(msg, Register) else msg.cp_id  # a second register counts
    if not speaks_for(brain, event.conn_id, cp_id, said):
        return
    cp.last_seen = time.time()
    match msg:
        case FaultReport():
            on_fault(brain, cp, msg.reason or "engine fault")
        case RecoveryReport():
            on_recovered(brain, cp)
        case Heartbeat() | Prove():  # seen, nothing more (a late proof says nothing)
            pass
        case Register():  # closed above
            pass
        case _:
            assert_never(msg)

def speaks_for(brain: Brain, conn_id: int, cp_id: str, said: str) -> bool:
    """A registered connection serves its own CP only: one that speaks for another
    is closed."""
    if said == cp_id:
        return True
    brain.link.close_connection(
        conn_id, f"monitor of {cp_id} spoke for another CP",
        RegisterRejected(cp_id=cp_id, reason="one connection serves one CP",
                         code=RejectCode.PROTOCOL))
    return False

def on_heartbeats(brain: Brain, event: Heartbeats) -> None:
    """Registered monitors that beat: they were seen then. (A connection the brain
    no longer holds was closed or replaced meanwhile: its beats say nothing.)"""
    for conn_id, said in event.beats:
        cp_id = brain.by_conn.get(conn_id)
        if cp_id is not None and speaks_for(brain, conn_id, cp_id, said):
            brain.cps[cp_id].last_seen = event.at

def accept(brain: Brain, conn_id: int, peer: str, cp: ChargePoint, msg: Register, *,
           proof: str, key_id: str) -> None:
    """A monitor registered (proven, at the authenticated level): its CP is live."""
    before = cp.state
    cp.conn_id, cp.peer, cp.last_seen = conn_id, peer, time.time()
    cp.presumed_until = 0.0
    brain.by_conn[conn_id] = cp.cp_id
    if msg.location and msg.location != cp.location:
        cp.location = msg.location
    cp.faulted = msg.health is Health.KO
    cp.fault_reason = "engine KO at registration" if cp.faulted else ""
    brain.link.send(conn_id, RegisterAccepted(
        cp_id=cp.cp_id, location=cp.location, price_eur_kwh=cp.price, proof=proof,
        key_id=key_id))
    brain.audit.write("registered", cp_id=cp.cp_id, source=peer, key_id=key_id)
    # Tell the engine its operator mode, so a restarted engine learns it.
    mode: Message = StopCP(cp_id=cp.cp_id) if cp.stopped else ResumeCP(cp_id=cp.cp_id)
    brain.order(cp, mode)
    session = cp.session
    if session is not None and session.waiting is Wait.MONITOR:
        session.wait(None)  # resumed after central's restart
        if cp.faulted:
            brain.end_session(session, EndReason.FAULT)
    brain.refresh_cp(cp, f"monitor registered from {peer}", before)

def on_connection_lost(brain: Brain, conn_id: int, reason: str) -> None:
    brain.challenges.pop(conn_id, None)
    cp_id = brain.by_conn.pop(conn_id, None)
    if cp_id is None:
        return
    cp = brain.cps.get(cp_id)
    if cp is None or cp.conn_id != conn_id:
        return
    before = cp.state
    cp.conn_id = None
    if cp.session is not None:
        brain.end_session(cp.session, EndReason.DISCONNECTED)
    brain.refresh_cp(cp, reason, before)

def on_fault(brain: Brain, cp: ChargePoint, reason: str) -> None:
    before = cp.state
    cp.faulted, cp.fault_reason = True, reason
    if cp.session is not None:
        brain.end_session(cp.session, EndReason.FAULT)
    brain.refresh_cp(cp, f"AVERÍA: {reason}", before)

def on_recovered(brain: Brain, cp: ChargePoint) -> None:
    before = cp.state
    cp.faulted, cp.fault_reason = False, ""
    brain.refresh_cp(cp, "engine OK again", before)


def on_register(brain: Brain, conn_id: int, peer: str, msg: Register) -> None:
    cp = brain.cps.get(msg.cp_id)
    if cp is None:
        brain.view.note(f"refused monitor at {peer}: {msg.cp_id} is not in the registry",
                        "warning")
        brain.link.close_connection(conn_id, f"unknown CP {msg.cp_id}", RegisterRejected(
            cp_id=msg.cp_id, code=RejectCode.UNKNOWN,
            reason=f"{msg.cp_id} is not in central's registry"))
        return
    if cp.conn_id is not None:
        brain.view.note(f"refused second monitor for {cp.cp_id} at {peer} "
                        f"(connected from {cp.peer})", "warning")
        brain.audit.write("refused", cp_id=cp.cp_id, source=peer, code="duplicate")
        _refuse_duplicate(brain, conn_id, cp)
        return
    if not brain.settings.secure:
        accept(brain, conn_id, peer, cp, msg, proof="", key_id="")
        return
    if not cp.secret or not msg.nonce:
        why = ("its credential was revoked" if not cp.secret
               else "the monitor did not send a nonce (an old or open-level monitor)")
        _refuse_auth(brain, conn_id, peer, cp.cp_id, why)
        return
    nonce = auth.new_nonce()
    brain.challenges[conn_id] = PendingRegistration(cp.cp_id, peer, msg, nonce)
    brain.link.send(conn_id, Challenge(cp_id=cp.cp_id, nonce=nonce))


def on_proof(brain: Brain, conn_id: int, pending: PendingRegistration, msg: Prove) -> None:
    """The monitor's answer to the challenge: accepted, or refused and audited."""
    cp = brain.cps.get(pending.cp_id)
    reg = pending.register
    if cp is None or not cp.secret:
        _refuse_auth(brain, conn_id, pending.peer, pending.cp_id, "no credential")
        return
    expected = auth.register_proof(cp.secret, cp.cp_id, reg.nonce, pending.nonce)
    if not auth.same(expected, msg.proof):
        _refuse_auth(brain, conn_id, pending.peer, cp.cp_id, "wrong credential")
        return
    if cp.conn_id is not None:  # another one registered meanwhile
        _refuse_duplicate(brain, conn_id, cp)
        return
    key = auth.kafka_key(cp.secret, reg.nonce, pending.nonce)
    kid = auth.key_id(key)
    cp.keys = {**{k: v for k, v in list(cp.keys.items())[-1:]}, kid: key}  # + previous
    accept(brain, conn_id, pending.peer, cp, reg, key_id=kid,
           proof=auth.central_proof(cp.secret, cp.cp_id, reg.nonce, pending.nonce))


def _refuse_duplicate(brain: Brain, conn_id: int, cp: ChargePoint) -> None:
    brain.link.close_connection(conn_id, f"duplicate monitor for {cp.cp_id}", RegisterRejected(
        cp_id=cp.cp_id, code=RejectCode.DUPLICATE,
        reason=f"{cp.cp_id} is already connected from another monitor"))


def _refuse_auth(brain: Brain, conn_id: int, peer: str, cp_id: str, why: str) -> None:
    brain.view.note(f"refused monitor for {cp_id} at {peer}: {why}", "warning")
    brain.audit.write("refused", cp_id=cp_id, source=peer, code="auth", why=why)
    brain.link.close_connection(conn_id, f"{cp_id}: {why}", RegisterRejected(
        cp_id=cp_id, code=RejectCode.AUTH, reason=f"central refused {cp_id}: {why}"))

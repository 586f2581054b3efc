"""The rules of central's TCP side: its monitors' registrations, heartbeats, faults,
recoveries and lost connections (the brain calls these with itself, on its thread).

One level per CP: central answers the ``register`` of a monitor that can prove (it sends
a nonce) with a ``challenge`` whenever it holds the CP's credential, whatever the level;
the monitor proves it over both nonces, central proves it back in ``register_ok`` and
both derive this registration's Kafka key. Such a CP is *proven*: its orders and readings
are signed from then on, and central never serves it unproven again (no downgrade) until
its credential is revoked. The open level also serves a CP that proves nothing: another
team's monitor, or one without the credential, when the CP was never proven. Every
refusal is said on the board and audited. A registered connection serves its own CP only.
An unregistered connection may pair instead (pairing.py), then register.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from evc.central import pairing, power
from evc.central.events import Heartbeats, MonitorFrame
from evc.central.model import PendingRegistration, Wait
from evc.ports import assert_never
from evc.protocol import auth
from evc.protocol.messages import (
    Challenge,
    ChargerNote,
    ChargerStatus,
    EndReason,
    EngineRefused,
    FaultReport,
    Health,
    Heartbeat,
    Message,
    PairProve,
    PairStart,
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
            case PairStart() if pending is None:
                pairing.on_pair_start(brain, event.conn_id, event.peer, msg)
            case PairProve() if pending is None:
                pairing.on_pair_prove(brain, event.conn_id, event.peer, msg)
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
        case EngineRefused():
            on_engine_refused(brain, cp, msg)
        case ChargerStatus():
            on_charger_status(brain, cp, msg)
        case ChargerNote():
            brain.view.note(f"{cp.cp_id}'s charger: {msg.note}")
            brain.audit.write("charger", cp_id=cp.cp_id, source=cp.peer, note=msg.note)
        case Heartbeat() | Prove() | PairStart() | PairProve():
            pass  # seen, nothing more (a late proof says nothing; pairing comes first)
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
    """A monitor registered (proven when ``key_id`` names its key): its CP is live."""
    before = cp.state
    cp.proven = bool(key_id) or cp.proven
    cp.conn_id, cp.peer, cp.last_seen = conn_id, peer, time.time()
    cp.via, cp.charger_status = msg.via, ""
    cp.presumed_until = 0.0
    brain.by_conn[conn_id] = cp.cp_id
    if msg.location and msg.location != cp.location:
        cp.location = msg.location
    cp.faulted = msg.health is Health.KO
    cp.fault_reason = "engine KO at registration" if cp.faulted else ""
    if msg.max_kw > 0 and msg.max_kw != cp.max_kw:  # what its engine says it can supply
        cp.max_kw = msg.max_kw
        power.reallocate(brain, cp.site)
    brain.link.send(conn_id, RegisterAccepted(
        cp_id=cp.cp_id, location=cp.location, price_eur_kwh=cp.price, proof=proof,
        key_id=key_id))
    brain.audit.write("registered", cp_id=cp.cp_id, source=peer, key_id=key_id,
                      proven=bool(key_id))
    # Tell the engine its operator mode, so a restarted engine learns it.
    mode: Message = StopCP(cp_id=cp.cp_id) if cp.stopped else ResumeCP(cp_id=cp.cp_id)
    brain.order(cp, mode)
    session = cp.session
    if session is not None and session.waiting is Wait.MONITOR:
        session.wait(None)  # resumed after central's restart
        if cp.faulted:
            brain.end_session(session, EndReason.FAULT)
    elif session is not None and session.end_reason is not None:
        # Its end was ordered under an earlier registration's key, which the engine may
        # never have got (its monitor killed between registering and handing the key
        # over): the order again, under this one's, and the final awaited anew. (An
        # engine or gateway that ended it already ignores it: its final is on its way.)
        brain.order_end(session)
    brain.refresh_cp(cp, f"monitor registered from {peer}"
                     + (" (proven)" if key_id else " (unproven: orders unsigned)"), before)

def on_connection_lost(brain: Brain, conn_id: int, reason: str) -> None:
    brain.challenges.pop(conn_id, None)
    brain.pairings.drop(conn_id)
    cp_id = brain.by_conn.pop(conn_id, None)
    if cp_id is None:
        return
    cp = brain.cps.get(cp_id)
    if cp is None or cp.conn_id != conn_id:
        return
    before = cp.state
    cp.conn_id, cp.charger_status = None, ""
    if cp.session is not None:
        brain.end_session(cp.session, EndReason.DISCONNECTED)
    brain.refresh_cp(cp, reason, before)

def on_fault(brain: Brain, cp: ChargePoint, reason: str) -> None:
    before = cp.state
    cp.faulted, cp.fault_reason = True, reason
    if cp.session is not None:
        brain.end_session(cp.session, EndReason.FAULT)
    brain.refresh_cp(cp, f"AVERÍA: {reason}", before)

def on_engine_refused(brain: Brain, cp: ChargePoint, msg: EngineRefused) -> None:
    """The CP's engine refused something and its monitor says so: the operator sees it.
    A start order central itself sent unsigned (the CP is not proven now, its engine was
    once) will never be obeyed: that supply ends at once, with a reason the driver reads."""
    brain.view.note(f"{cp.cp_id}'s engine refused {msg.refused}", "warning")
    brain.audit.write("refused", cp_id=cp.cp_id, source=cp.peer, code="engine",
                      why=msg.refused)
    session = cp.session
    if (session is not None and msg.session_id == session.session_id and not cp.proven
            and not session.supplying and session.end_reason is None):
        brain.end_session(session, EndReason.REFUSED)
        brain.close_session(session, EndReason.REFUSED)


def on_charger_status(brain: Brain, cp: ChargePoint, msg: ChargerStatus) -> None:
    """An OCPP charger's own status, for the board (its faults come as FaultReport)."""
    words = (msg.status + (f" ({msg.error_code})" if msg.error_code not in ("", "NoError")
                           else "") + (f": {msg.info}" if msg.info else ""))[:200]
    if words == cp.charger_status:  # the same again (every boot says it): no news
        return
    cp.charger_status = words
    brain.view.note(f"{cp.cp_id}'s charger is {cp.charger_status}")
    brain.refresh_cp(cp, f"charger {msg.status}", cp.state)


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
    required = must_prove(brain, cp)
    if cp.secret and msg.nonce:  # it can prove, and central can check: it must try
        nonce = auth.new_nonce()
        brain.challenges[conn_id] = PendingRegistration(cp.cp_id, peer, msg, nonce)
        brain.link.send(conn_id, Challenge(cp_id=cp.cp_id, nonce=nonce, required=required))
    elif not required:
        accept(brain, conn_id, peer, cp, msg, proof="", key_id="")
    elif not cp.secret:
        _refuse_auth(brain, conn_id, peer, cp.cp_id,
                     f"it has no credential at central (revoked?); pair it: `pair {cp.cp_id}`")
    else:
        _refuse_auth(brain, conn_id, peer, cp.cp_id,
                     "the monitor proves nothing (a client without credentials)"
                     + ("; it proved its credential before" if cp.proven else ""))


def must_prove(brain: Brain, cp: ChargePoint) -> bool:
    """Whether only a proven monitor may serve ``cp``: always at the authenticated level,
    and at the open level once the CP has been proven (no downgrade)."""
    return brain.settings.secure or cp.proven


def on_proof(brain: Brain, conn_id: int, pending: PendingRegistration, msg: Prove) -> None:
    """The monitor's answer to the challenge: accepted, or refused and audited."""
    cp = brain.cps.get(pending.cp_id)
    reg = pending.register
    if cp is None or not cp.secret:
        _refuse_auth(brain, conn_id, pending.peer, pending.cp_id, "no credential")
        return
    if not msg.proof:  # "I hold no credential": served only where nothing must be proven
        if must_prove(brain, cp):
            _refuse_auth(brain, conn_id, pending.peer, cp.cp_id,
                         "the monitor holds no credential"
                         + ("; it proved its credential before" if cp.proven else ""))
        elif cp.conn_id is not None:
            _refuse_duplicate(brain, conn_id, cp)
        else:
            accept(brain, conn_id, pending.peer, cp, reg, proof="", key_id="")
        return
    expected = auth.register_proof(cp.secret, cp.cp_id, reg.nonce, pending.nonce)
    if not auth.same(expected, msg.proof):
        _refuse_auth(brain, conn_id, pending.peer, cp.cp_id,
                     f"wrong credential (an old one?); pair it again: `pair {cp.cp_id}`")
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

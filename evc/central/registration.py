"""How a monitor registers: who may, and the challenge that proves it (the brain's rules
for a connection that is not registered yet; ``Brain.accept`` makes its CP live).

At the authenticated level central answers a ``register`` with a ``challenge`` (its
nonce); the monitor proves its CP's secret over both nonces, central proves it back in
``register_ok`` and both derive this registration's Kafka key. At the open level a
known, free CP is accepted at once. Every refusal is said on the board and audited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evc.central.model import PendingRegistration
from evc.protocol import auth
from evc.protocol.messages import Challenge, Prove, Register, RegisterRejected, RejectCode

if TYPE_CHECKING:
    from evc.central.brain import Brain
    from evc.central.model import ChargePoint


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
        brain.accept(conn_id, peer, cp, msg, proof="", key_id="")
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
    brain.accept(conn_id, pending.peer, cp, reg, key_id=kid,
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

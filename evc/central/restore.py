"""How a central that starts (after a stop, a crash or a takeover) takes up its stored
state. Every CP starts Desconectado until its monitor registers again, or, after a
takeover, keeps its last state for ``presume`` seconds (a failover shorter than the
heartbeat timeout shows nobody gone). Sessions that were running go on: the charge points
kept supplying; their monitors get ``resume_grace`` to come back, and an end already
decided still awaits the engine's final figures. Requests that already got a session are
never answered twice; what was decided and never confirmed by Kafka is sent again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from evc.central import power
from evc.central.model import ChargePoint, Session, Wait
from evc.protocol.messages import CPState, EndReason
from evc.store import DRIVERS, META, SITES

if TYPE_CHECKING:
    from evc.central.brain import Brain


def restore(brain: Brain) -> None:
    """Take up the stored state: the registry, the drivers, the sessions that were open,
    the messages decided but never confirmed."""
    for rec in brain.store.cps():
        brain.cps[rec["cp_id"]] = ChargePoint.from_record(rec)
    brain.drivers = {r["driver_id"]: str(r.get("secret", "")) for r in brain.store.all(DRIVERS)}
    brain.proven_drivers = {r["driver_id"] for r in brain.store.all(DRIVERS) if r.get("proven")}
    brain.sites = {str(r["site"]): r.get("max_kw") for r in brain.store.all(SITES)}
    # After a restart every CP is Desconectado until its monitor registers again, or,
    # with ``presume``, once its monitor has had that long to register again.
    until = time.monotonic() + brain.presume
    for rec in brain.store.cps():
        cp = brain.cps[rec["cp_id"]]
        last = cp.stored_state(rec)
        if brain.presume and last is not CPState.DESCONECTADO:
            cp.state, cp.presumed_until = last, until
            brain.presumed.add(cp.cp_id)
            continue
        brain.store.put_cp({"cp_id": cp.cp_id, "state": str(CPState.DESCONECTADO)})
        brain.status_due.add(cp.cp_id)
    alive = brain.store.get(META, "alive")
    if alive is not None:  # central was away from then until now
        brain.outages.append((float(alive["at"]), brain.started_at))
    # Requests that already got a session are never answered twice.
    for rec in brain.store.sessions():
        if rec.get("request_id"):
            brain.answered[rec["request_id"]] = None
    # Sessions that were running when central stopped go on: the charge points kept
    # supplying. Their monitors must come back; an end already decided still awaits
    # the engine's final figures.
    for rec in brain.store.sessions(status="open"):
        session = Session.from_record(rec)
        brain.add_session(session)
        owner = brain.cps.get(session.cp_id)
        if owner is None:  # removed from the registry meanwhile: end it now
            brain.end_session(session, EndReason.CENTRAL_RESTART)
            continue
        owner.session = session
        if session.end_reason is not None:
            session.wait(Wait.FINAL, brain.settings.final_timeout)
        else:
            session.wait(Wait.MONITOR, brain.settings.resume_grace)
    if brain.sessions:
        brain.view.note(f"resuming {len(brain.sessions)} open supplies; their monitors have "
                        f"{brain.settings.resume_grace:g} s to register again")
    brain.out.restore()  # decided before the stop, never confirmed: sent again
    # the shares again, from the sessions (what each engine may draw is stored with them),
    # before any new authorization
    power.reallocate_all(brain)
    brain.flush()

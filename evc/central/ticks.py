"""The brain's clock: what each tick does (deadlines, re-sends, Kafka's health, central's
liveness and heartbeat, the CPs' public states, the view). Called by ``Brain.tick`` on the
brain's thread, with the brain, as monitors.py and power.py are."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from evc.central import power
from evc.central.model import Session, Wait
from evc.protocol.messages import CentralStatus, CPStatus, EndReason
from evc.protocol.topics import CENTRAL_KEY, NETWORK
from evc.store import META

if TYPE_CHECKING:
    from evc.central.brain import Brain


def tick(brain: Brain) -> None:
    """Deadlines, re-sends, Kafka's health and central's heartbeat; then the view."""
    now = time.monotonic()
    check_bus(brain, now)
    brain.pairings.expire(now)
    if brain.bus_down_since is None:
        for session in list(brain.sessions.values()):
            if session.waiting is not None and now > session.deadline:
                deadline_passed(brain, session)
        if brain.settings.max_supply:
            limit = time.time() - brain.settings.max_supply
            for session in list(brain.sessions.values()):
                if session.end_reason is None and session.started_at < limit:
                    brain.view.note(f"{session.cp_id}: supply of {session.driver_id} ended "
                                    f"after the maximum of {brain.settings.max_supply:g} s")
                    brain.end_session(session, EndReason.TIME_LIMIT)
    brain.out.unsent.resend_due(now)
    if brain.presumed and now > min(brain.cps[c].presumed_until if c in brain.cps else 0.0
                                    for c in brain.presumed):
        for cp_id in sorted(brain.presumed):
            cp = brain.cps.get(cp_id)
            if cp is None or now > cp.presumed_until:
                brain.presumed.discard(cp_id)
                if cp is not None and cp.presumed_until and cp.conn_id is None:
                    cp.presumed_until = 0.0
                    brain.refresh_cp(cp, "its monitor did not register again", cp.state)
    if now >= brain.next_alive:  # how long central was away, if it dies now
        brain.next_alive = now + 1.0
        brain.store.put(META, {"name": "alive", "at": time.time()})
    publish_status(brain)
    if now >= brain.next_heartbeat:
        brain.next_heartbeat = now + brain.settings.heartbeat
        brain.out.publish(NETWORK, CentralStatus(
            central=brain.identity, started_at=brain.started_at,
            kafka_ok=brain.bus_down_since is None, epoch=brain.epoch), CENTRAL_KEY)
        for status in power.site_statuses(brain):
            brain.out.publish(NETWORK, status, f"@site/{status.site}")
    brain.view.refresh(brain)


def publish_status(brain: Brain) -> None:
    """Each changed CP's public state to network_topic (a tombstone once removed)."""
    due, brain.status_due = brain.status_due, set()
    for cp_id in sorted(due):
        cp = brain.cps.get(cp_id)
        status = None if cp is None else CPStatus(
            cp_id=cp.cp_id, location=cp.location, price_eur_kwh=cp.price, state=cp.state,
            detail=cp.public_detail(), via=cp.via,
            last_seen=cp.last_seen or 0.0, proven=cp.proven, site=cp.site,
            kw=cp.session.kw if cp.session is not None else 0.0)
        if not brain.out.publish(NETWORK, status, cp_id, status_of=cp_id):
            brain.status_due.add(cp_id)


def check_bus(brain: Brain, now: float) -> None:
    """Kafka is unavailable while nothing we send is confirmed (heartbeats each second).

    Deadlines stop counting meanwhile: an engine's final figures or a driver's
    end request may be waiting in a producer's buffer, not lost.
    """
    silent = now - brain.out.last_confirm > brain.settings.bus_timeout
    if silent and brain.bus_down_since is None:
        brain.bus_down_since = time.time()
        brain.bus_down_mono = now
        brain.view.note("Kafka unavailable: supplies go on; deadlines wait for it", "error")
    elif not silent and brain.bus_down_since is not None:
        outage = now - brain.bus_down_mono
        for session in brain.sessions.values():
            if session.waiting is not None:
                session.deadline += outage
        brain.outages = [*brain.outages[-19:], (brain.bus_down_since, time.time())]
        brain.bus_down_since = None
        brain.view.note(f"Kafka is back after {outage:.0f} s")


def deadline_passed(brain: Brain, session: Session) -> None:
    if session.waiting is Wait.START:
        brain.view.note(f"{session.cp_id}: its engine did not start the supply of "
                        f"{session.driver_id} within {brain.settings.start_timeout:g} s; "
                        "ended", "warning")
        brain.end_session(session, EndReason.NO_ENGINE)
        if not session.supplying:  # it never sent a first figure: no final will come
            brain.close_session(session, EndReason.NO_ENGINE)
    elif session.waiting is Wait.MONITOR:
        brain.view.note(f"{session.cp_id}: its monitor did not come back after the "
                        "restart; ending the supply", "warning")
        brain.end_session(session, EndReason.DISCONNECTED)
    else:
        assert session.end_reason is not None
        brain.view.note(
            f"{session.cp_id}: no final telemetry from the engine; billing the "
            f"last figures seen ({session.kwh:.2f} kWh)", "warning")
        brain.close_session(session, session.end_reason)

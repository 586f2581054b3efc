"""Sharing each site's power limit among its running supplies (the brain calls these with
itself, on its thread; allocation.py holds the rule, this module the orders).

After every change (a start, an end, a fault, a new limit, a CP's maximum) central works
out each supply's share (``target_kw``) and orders it (``start_supply.kw``, then
``set_power``). A limit is a promise: what the site counts for a supply is the most its
engine may be drawing (``granted_kw``). A decrease is sent at once but counted only once
the engine's reading shows it obeyed (``telemetry.kw``); an increase is sent only when the
site's count with it stays within the limit. So the shares the engines obey never add up
to more than the limit, whatever order Kafka delivers them in and whoever dies meanwhile
(a dead engine's supply ends, and only then leaves the count). Sessions store these
figures: a central that restarts or takes over goes on from them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evc.central.allocation import Demand, allocate
from evc.protocol.messages import SetPower, SiteStatus, Telemetry
from evc.store import SESSIONS

if TYPE_CHECKING:
    from evc.central.brain import Brain
    from evc.central.model import ChargePoint, Session

TOLERANCE = 0.01  # kW: a reading this close to its share has obeyed it


def limit_of(brain: Brain, cp: ChargePoint) -> float | None:
    return brain.sites.get(cp.site) if cp.site else None


def cap(cp: ChargePoint, session: Session) -> float:
    """The most a supply may get: its CP's maximum, or its EV's request when smaller."""
    return min(cp.max_kw, session.ev_max_kw) if session.ev_max_kw > 0 else cp.max_kw


def site_sessions(brain: Brain, site: str) -> list[Session]:
    out = []
    for session in brain.sessions.values():
        cp = brain.cps.get(session.cp_id)
        if cp is not None and cp.site == site:
            out.append(session)
    return out


def start_share(brain: Brain, cp: ChargePoint, session: Session) -> float | None:
    """The share a new supply starts with (its ``start_supply.kw``; None: no limit). It
    starts at 0 (waiting) when its share does not fit beside what the others may draw."""
    limit = limit_of(brain, cp)
    if limit is None:
        session.target_kw = session.sent_kw = None
        session.granted_kw = cap(cp, session)
        return None
    targets = _targets(brain, cp.site, limit)
    want = targets.get(session.session_id, 0.0)
    others = sum(s.granted_kw for s in site_sessions(brain, cp.site) if s is not session)
    kw = want if others + want <= limit + 1e-9 else 0.0
    session.sent_kw = session.granted_kw = kw
    return kw


def started(session: Session, order_id: str) -> None:
    """The start order that carried the first share: readings that name it obeyed it."""
    session.sent_order = order_id


def _targets(brain: Brain, site: str, limit: float | None) -> dict[str, float]:
    """Each running supply's share now; ended ones (still counted until closed) get 0."""
    running = [s for s in site_sessions(brain, site) if s.end_reason is None]
    demands = [Demand(s.session_id, cap(brain.cps[s.cp_id], s), s.started_at)
               for s in running]
    targets = allocate(limit, demands, brain.settings.min_kw)
    for s in running:
        s.target_kw = None if limit is None else targets[s.session_id]
    return targets


def reallocate(brain: Brain, site: str) -> None:
    """A change at ``site``: new shares, the decreases ordered now, the increases when
    they fit."""
    if not site:
        return
    limit = brain.sites.get(site)
    _targets(brain, site, limit)
    send_due(brain, site)


def reallocate_all(brain: Brain) -> None:
    for site in sorted({cp.site for cp in brain.cps.values() if cp.site}):
        reallocate(brain, site)


def send_due(brain: Brain, site: str) -> None:
    """Order the shares that may go now. What decides is what the site counts for each
    supply (``granted_kw``): a share below it is a decrease (sent at once, counted once
    obeyed), a share above it an increase (sent only when the count with it stays within
    the limit), whatever was last sent (a share central does not know it sent, as after
    a restart, is no exception)."""
    limit = brain.sites.get(site)
    sessions = [s for s in site_sessions(brain, site) if s.end_reason is None]
    for s in sessions:  # decreases first: sent now, counted once obeyed
        if limit is not None and s.target_kw is not None and \
                s.target_kw < s.granted_kw - 1e-9 and \
                (s.sent_kw is None or s.target_kw < s.sent_kw - 1e-9):
            _order(brain, s, s.target_kw)
    counted = sum(s.granted_kw for s in site_sessions(brain, site))
    for s in sorted(sessions, key=lambda x: (x.started_at, x.session_id)):
        if limit is None:
            if s.sent_kw is not None:  # the limit is gone: the CP's maximum
                _order(brain, s, None)
                s.granted_kw = cap(brain.cps[s.cp_id], s)
            continue
        target = s.target_kw or 0.0
        if target < s.granted_kw - 1e-9 or (
                s.sent_kw is not None and abs(target - s.sent_kw) <= 1e-9):
            continue  # a decrease (above), or already ordered
        extra = target - s.granted_kw
        if counted + max(0.0, extra) <= limit + 1e-9:
            s.granted_kw = target  # counted from now, and stored with the order
            _order(brain, s, target)
            counted += max(0.0, extra)


def _order(brain: Brain, session: Session, kw: float | None) -> None:
    cp = brain.cps.get(session.cp_id)
    if cp is None:
        return
    session.power_seq += 1
    order = SetPower(cp_id=cp.cp_id, session_id=session.session_id, kw=kw,
                     seq=session.power_seq)
    session.sent_kw, session.sent_order = kw, order.msg_id
    brain.order(cp, order)
    _store(brain, session)


def _store(brain: Brain, session: Session) -> None:
    brain.store.put(SESSIONS, {"session_id": session.session_id, "sent_kw": session.sent_kw,
                               "granted_kw": session.granted_kw,
                               "sent_order": session.sent_order,
                               "power_seq": session.power_seq})


def site_statuses(brain: Brain) -> list[SiteStatus]:
    """Each site's limit and load (what its engines report), for the board and
    network_topic."""
    out = []
    for site in sorted({cp.site for cp in brain.cps.values() if cp.site} | set(brain.sites)):
        sessions = [s for s in site_sessions(brain, site) if s.end_reason is None]
        out.append(SiteStatus(
            site=site, limit_kw=brain.sites.get(site), load_kw=round(sum(
                s.kw for s in sessions), 3), supplies=len(sessions),
            waiting=sum(1 for s in sessions if s.target_kw is not None and s.target_kw <= 0)))
    return out


def on_reading(brain: Brain, session: Session, t: Telemetry) -> None:
    """A reading says what the engine supplies: a decrease it obeyed (the reading names
    the order) frees its power."""
    if t.kw is None:
        return
    if t.kw != session.kw:  # its public state says the power it supplies
        brain.status_due.add(session.cp_id)
    session.kw = t.kw
    cp = brain.cps.get(session.cp_id)
    if cp is None or not cp.site or session.sent_kw is None:
        return
    if (session.granted_kw > session.sent_kw and t.power_order == session.sent_order
            and t.kw <= session.sent_kw + TOLERANCE):
        session.granted_kw = session.sent_kw
        _store(brain, session)
        send_due(brain, cp.site)

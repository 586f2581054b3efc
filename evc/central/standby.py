"""A central that does not hold the lease: the standby.

It follows the active central's changelog into its own store (so it can take over
with the state up to date), shows the network read-only, and sends monitors that
reach it to the active central (``register_rejected`` with code ``standby``).
Pure state and rules here; the threads and Kafka clients are command.py's.
"""

from __future__ import annotations

import time

from evc.central.model import ChargePoint, Counters, Session
from evc.protocol.messages import CPState
from evc.store import SITES, Store


class StandbyModel:
    """What the board draws while standby: the replicated registry and open sessions.

    It has the attributes the board reads from a Brain (``cps``, ``counters``,
    ``counts()``, ``bus_down_since``) plus ``banner``, the line saying who is active.
    """

    def __init__(self) -> None:
        self.cps: dict[str, ChargePoint] = {}
        self.sessions: dict[str, Session] = {}  # the open ones (for the sites' loads)
        self.sites: dict[str, float | None] = {}
        self.counters = Counters()
        self.bus_down_since: float | None = None
        self.active = ""  # the active central, from its heartbeat on network_topic
        self.active_since = 0.0
        self.epoch = 0
        self.heard = 0.0  # wall clock of the active central's last heartbeat

    @property
    def banner(self) -> str:
        if not self.active:
            return "STANDBY: no active central heard yet"
        since = time.strftime("%H:%M:%S", time.localtime(self.active_since))
        late = time.time() - self.heard
        silent = f", silent for {late:.0f} s" if late > 3 else ""
        return f"STANDBY: active is {self.active} since {since}{silent}"

    def heard_active(self, central: str, since: float, epoch: int) -> None:
        self.active, self.active_since, self.epoch = central, since, epoch
        self.heard = time.time()

    def reload(self, store: Store) -> None:
        """Rebuild the view from the store (the active central's state, as replicated)."""
        cps: dict[str, ChargePoint] = {}
        for rec in store.cps():
            cp = cps[rec["cp_id"]] = ChargePoint.from_record(rec)
            cp.state = cp.stored_state(rec)
            cp.fault_reason = "reported by its monitor" if cp.state is CPState.AVERIADO else ""
        sessions: dict[str, Session] = {}
        for rec in store.sessions(status="open"):
            owner = cps.get(rec.get("cp_id", ""))
            if owner is not None:
                owner.session = sessions[rec["session_id"]] = Session.from_record(rec)
        self.cps, self.sessions = cps, sessions
        self.sites = {str(r["site"]): r.get("max_kw") for r in store.all(SITES)}
        closed = store.sessions(status="closed")
        self.counters = Counters(authorized=len(closed) + sum(
            1 for cp in cps.values() if cp.session is not None), tickets=len(closed))

    def counts(self) -> dict[CPState, int]:
        out = {state: 0 for state in CPState}
        for cp in self.cps.values():
            out[cp.state] += 1
        return out

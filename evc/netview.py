"""The network as anyone can see it from network_topic: CPs' public states, central's pulse.

Drivers (`--list`, and a word before requesting a CP that is not available), engines
("central unavailable") and `evc status` keep one of these, fed by their consumer of
network_topic. Central's liveness comes only from heartbeats written after the reader
started (``live``): history says what central last said, not that it is there now, and
no clock is compared across machines.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from evc.display import Row, ago, trust_word
from evc.protocol.messages import (
    CentralStatus,
    CPState,
    CPStatus,
    Message,
    Removed,
    SiteStatus,
    StandbyStatus,
)
from evc.protocol.topics import STANDBY_KEY


class NetworkView:
    def __init__(self, central_timeout: float = 3.0) -> None:
        self.central_timeout = central_timeout
        self.cps: dict[str, CPStatus] = {}
        self.sites: dict[str, SiteStatus] = {}
        self.central: CentralStatus | None = None
        self.standbys: dict[str, float] = {}  # standby central -> when last heard (monotonic)
        self._beat: float | None = None  # monotonic: last live heartbeat
        self._started = time.monotonic()

    def apply(self, msg: Message, live: bool = True) -> None:
        """A record of network_topic (anything else there is not news of the network)."""
        match msg:
            case CPStatus():
                self.cps[msg.cp_id] = msg
            case Removed():
                self.cps.pop(msg.key, None)
                if msg.key.startswith(STANDBY_KEY):
                    self.standbys.pop(msg.key[len(STANDBY_KEY):], None)
            case StandbyStatus():
                if live:
                    self.standbys[msg.central.split(" ")[0]] = time.monotonic()
            case CentralStatus():
                self.central = msg
                if live:
                    self._beat = time.monotonic()
            case SiteStatus():
                self.sites[msg.site] = msg
            case _:
                pass

    def heard_central(self) -> None:
        """A live answer signed by central: it is there, whatever its heartbeat's timing."""
        self._beat = time.monotonic()

    # ------------------------------------------------------------------ central
    def central_available(self) -> bool:
        return self._beat is not None and time.monotonic() - self._beat <= self.central_timeout

    def central_silent(self) -> bool:
        """No heartbeat for the timeout (also never one since we started reading)."""
        since = self._beat if self._beat is not None else self._started
        return time.monotonic() - since > self.central_timeout

    def standbys_ready(self) -> list[str]:
        """The standby centrals heard lately (each says so every 2 s): ready to take over."""
        now = time.monotonic()
        return sorted(who for who, heard in self.standbys.items() if now - heard <= 6.0)

    def unavailable_since(self) -> float | None:
        """Wall clock of central's last heartbeat (its own time), if any was ever seen."""
        return self.central.ts if self.central is not None else None

    # ------------------------------------------------------------------ charge points
    def why_not(self, cp_id: str) -> str | None:
        """Why ``cp_id`` cannot take a supply now, as far as the network says; None if it can
        (or nothing is known: central decides)."""
        status = self.cps.get(cp_id)
        if status is None or status.state is CPState.ACTIVADO:
            return None
        words = {
            CPState.SUMINISTRANDO: "is supplying someone else",
            CPState.PARADO: "is stopped by the operator (out of order)",
            CPState.AVERIADO: "is out of service (fault)",
            CPState.DESCONECTADO: "is disconnected",
        }[status.state]
        return f"{cp_id} {words}"

    def available(self) -> list[CPStatus]:
        return sorted((s for s in self.cps.values() if s.state is CPState.ACTIVADO),
                      key=lambda s: s.cp_id)

    def site_lines(self) -> list[str]:
        """Each site's load against its limit, for a header."""
        return [site_line(s) for _, s in sorted(self.sites.items())]

    def rows(self, now: float | None = None) -> list[Row]:
        now = time.time() if now is None else now
        return [Row(s.cp_id, s.location, s.price_eur_kwh, s.state, detail(s, now), s.proven)
                for s in self.cps.values()]

    def document(self) -> dict[str, Any]:
        """Everything as plain JSON data (`evc status --json`)."""
        c = self.central
        return {
            "central": {
                "available": self.central_available(),
                "central": c.central if c else None,
                "started_at": c.started_at if c else None,
                "last_heartbeat": c.ts if c else None,
            },
            "cps": [{"cp_id": s.cp_id, "location": s.location,
                     "price_eur_kwh": s.price_eur_kwh, "state": str(s.state),
                     "detail": s.detail, "last_seen": s.last_seen or None,
                     "proven": s.proven, "site": s.site or None, "kw": s.kw}
                    for s in sorted(self.cps.values(), key=lambda s: s.cp_id)],
            "sites": [{"site": s.site, "limit_kw": s.limit_kw, "load_kw": s.load_kw,
                       "supplies": s.supplies, "waiting": s.waiting}
                      for _, s in sorted(self.sites.items())],
        }

    def changes(self, shown: dict[str, Any]) -> list[str]:
        """Lines for what changed since ``shown`` (updated in place): plain-text output."""
        out = []
        available = self.central_available()
        if shown.get("@central") != available:
            shown["@central"] = available
            out.append("central available" if available else "central unavailable")
        for cp_id in sorted(self.cps):
            s = self.cps[cp_id]
            if shown.get(cp_id) != s.state:
                shown[cp_id] = s.state
                trust = trust_word(s.proven, s.state)
                out.append(f"{cp_id} {s.state}" + (f" ({s.detail})" if s.detail else "")
                           + (f" [{trust}]" if trust else ""))
        for cp_id in [k for k in shown if k != "@central" and k not in self.cps]:
            del shown[cp_id]
            out.append(f"{cp_id} removed")
        return out


def site_line(s: SiteStatus) -> str:
    """``P1 20.0/30 kW, 3 supplying, 1 waiting``."""
    limit = "no limit" if s.limit_kw is None else f"{s.limit_kw:g} kW"
    text = f"{s.site} {s.load_kw:.1f} kW of {limit}, {s.supplies} supplying"
    return text + (f", {s.waiting} waiting for power" if s.waiting else "")


def detail(s: CPStatus, now: float) -> str:
    """A CP's public detail; an OCPP charger's marked, with its own status."""
    text = _detail(s, now)
    if s.via != "ocpp":
        return text
    status = charger_status(s)
    mark = f"[OCPP {status}]" if status else "[OCPP]"
    return mark if s.state is CPState.ACTIVADO else f"{mark} {text}".strip()


def charger_status(s: CPStatus) -> str:
    """An OCPP charger's own status while it serves (Available, Charging, …)."""
    live = s.state in (CPState.ACTIVADO, CPState.SUMINISTRANDO)
    return s.detail if s.via == "ocpp" and live else ""


def _detail(s: CPStatus, now: float) -> str:
    if s.state is CPState.DESCONECTADO:
        return f"last seen {ago(max(0.0, now - s.last_seen))} ago" if s.last_seen else \
            "never seen"
    if s.state is CPState.SUMINISTRANDO:
        if s.site and s.kw <= 0:
            return "in use (en espera: waiting for power)"
        return f"in use, {s.kw:.1f} kW" if s.kw else "in use"
    return s.detail


def read_current(view: NetworkView, inbox: queue.Queue[tuple[Message, bool]],
                 caught_up: threading.Event, stop: threading.Event) -> None:
    """Apply network_topic's history, then wait briefly for a live heartbeat of central:
    what `--list` and `evc status --once` show."""

    def take(timeout: float) -> None:
        try:
            msg, live = inbox.get(timeout=timeout)
        except queue.Empty:
            return
        view.apply(msg, live)
        while True:
            try:
                msg, live = inbox.get_nowait()
            except queue.Empty:
                return
            view.apply(msg, live)

    deadline = time.monotonic() + 15
    while not caught_up.is_set() and time.monotonic() < deadline and not stop.is_set():
        take(0.1)
    beat_by = time.monotonic() + view.central_timeout
    while not view.central_available() and time.monotonic() < beat_by and not stop.is_set():
        take(0.1)
    take(0.05)


class CentralWatch:
    """Says once that central is unavailable, and once that it is back (an engine's and a
    driver's screen): ``lost(since)`` and ``back(seconds away)`` make the lines."""

    def __init__(self, view: NetworkView, say: Callable[[str], None], *,
                 lost: Callable[[float], str], back: Callable[[float], str]) -> None:
        self.view = view
        self.say = say
        self.lost = lost
        self.back = back
        self.since: float | None = None  # wall clock: unavailable since then

    def check(self, *, hold: bool = False) -> None:
        """Look again; ``hold``: not yet (news may be waiting to be read)."""
        silent = self.view.central_silent()
        if silent and self.since is None and not hold:
            self.since = time.time()  # this machine's clock: "away" is measured on it
            self.say(self.lost(self.since))
        elif not silent and self.since is not None:
            away = time.time() - self.since
            self.since = None
            self.say(self.back(away))

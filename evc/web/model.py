"""What the web board shows, built from Kafka alone: network_topic (each CP's public
state, central's heartbeat, the sites) and central_changelog (the sessions central
stores). One thread owns a ``WebModel`` (web/command.py); the HTTP threads only read the
documents it publishes or ask it questions through that thread.

Two views of the same network: the public one (no driver ids: who charges where is an
operator's business) and the operator's. The changelog keeps the last closed sessions
central holds; a closed session central archives (a tombstone) stays in this model's
history for ``history_days``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import secrets
import time
from collections import Counter
from typing import Any

from evc.display import LABEL, trust_word
from evc.netview import NetworkView, charger_status, detail
from evc.protocol.messages import CPState, CPStatus, Message, Removed

log = logging.getLogger(__name__)

CURVE_POINTS = 600  # readings kept per running supply for its kWh curve
STATE_CLASS = {
    CPState.ACTIVADO: "activado", CPState.PARADO: "parado",
    CPState.SUMINISTRANDO: "suministrando", CPState.AVERIADO: "averiado",
    CPState.DESCONECTADO: "desconectado",
}
TICKET_COLUMNS = ("session_id", "cp_id", "driver_id", "started_at", "ended_at",
                  "consumo_kwh", "price_eur_kwh", "importe_eur", "reason", "ticket_id")


def iso(ts: float | None) -> str:
    if not ts:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


class WebModel:
    def __init__(self, central_timeout: float = 3.0, history_days: float = 7.0) -> None:
        self.net = NetworkView(central_timeout)
        self.history_days = history_days
        self.sessions: dict[str, dict[str, Any]] = {}  # session_id -> central's record
        self.open_by_cp: dict[str, str] = {}  # cp_id -> its open session's id
        self.curves: dict[str, list[tuple[float, float]]] = {}  # open session -> (ts, kWh)
        self.version = 0  # grows with every change a page could show
        self.dirty: set[str] = set()  # CPs whose row changed since ``take_changes``
        self.gone: set[str] = set()  # CPs removed since then
        self._rows: dict[tuple[str, bool], bytes] = {}  # each row's JSON, until it changes
        self.audit: dict[str, dict[str, Any]] = {}  # central's audit ring: slot -> event
        self.kafka_down_since: float | None = None  # this web server cannot reach Kafka
        self._available: tuple[bool, tuple[str, ...]] = (False, ())

    # ------------------------------------------------------------------ inputs
    def on_network(self, msg: Message, live: bool) -> None:
        self.net.apply(msg, live)
        if isinstance(msg, CPStatus):
            self._touch(msg.cp_id)
            self.gone.discard(msg.cp_id)
        elif isinstance(msg, Removed) and not msg.key.startswith("@"):
            self._touch(msg.key)
            self.dirty.discard(msg.key)
            self.gone.add(msg.key)
        self.version += 1

    def on_changelog(self, key: str, value: str | None, now: float | None = None) -> None:
        """A record of central_changelog: ``sessions/<id>`` are the ones shown here."""
        table, _, record_key = key.partition("/")
        if table == "audit" and record_key:
            self._on_audit(record_key, value)
            return
        if table != "sessions" or not record_key:
            return
        if value is None:  # central archived (or dropped) it: kept here if it was closed
            rec = self.sessions.get(record_key)
            if rec is not None and rec.get("status") != "closed":
                self._forget(record_key)
            return
        try:
            rec = json.loads(value)
        except ValueError:
            log.warning("a changelog record that is not JSON skipped (%s)", key[:80])
            return
        if not isinstance(rec, dict) or not isinstance(rec.get("cp_id"), str):
            return
        rec["session_id"] = record_key
        self.sessions[record_key] = rec
        cp_id = rec["cp_id"]
        self._touch(cp_id)
        if rec.get("status") == "closed":
            if self.open_by_cp.get(cp_id) == record_key:
                del self.open_by_cp[cp_id]
            self.curves.pop(record_key, None)
        else:
            self.open_by_cp[cp_id] = record_key
            curve = self.curves.setdefault(record_key, [])
            kwh = _num(rec.get("consumo_kwh"))
            if not curve or curve[-1][1] != kwh:
                curve.append((time.time() if now is None else now, kwh))
                del curve[:-CURVE_POINTS]
        self.version += 1
        self._prune(time.time() if now is None else now)

    def _touch(self, cp_id: str) -> None:
        self.dirty.add(cp_id)
        self._rows.pop((cp_id, False), None)
        self._rows.pop((cp_id, True), None)

    def _on_audit(self, slot: str, value: str | None) -> None:
        if value is None:
            self.audit.pop(slot, None)
            return
        try:
            rec = json.loads(value)
        except ValueError:
            return
        if isinstance(rec, dict) and isinstance(rec.get("seq"), int):
            self.audit[slot] = rec

    def audit_doc(self, limit: int = 200, event: str | None = None) -> dict[str, Any]:
        """Central's last audited events, newest first (``event``: only those)."""
        found = sorted((r for r in self.audit.values()
                        if event is None or r.get("event") == event),
                       key=lambda r: r["seq"], reverse=True)
        return {"count": len(found), "events": found[:limit]}

    def on_kafka(self, ok: bool, now: float) -> None:
        """Whether this process reaches the broker (its own check, every few seconds)."""
        if ok == (self.kafka_down_since is None):
            return
        self.kafka_down_since = None if ok else now
        self.version += 1

    def tick(self) -> bool:
        """Time passes: True when central's availability (or its standbys) changed."""
        seen = (self.net.central_available(), tuple(self.net.standbys_ready()))
        if seen != self._available:
            self._available = seen
            self.version += 1
            return True
        return False

    def _forget(self, session_id: str) -> None:
        rec = self.sessions.pop(session_id, None)
        self.curves.pop(session_id, None)
        if rec is not None and self.open_by_cp.get(rec["cp_id"]) == session_id:
            del self.open_by_cp[rec["cp_id"]]

    def _prune(self, now: float) -> None:
        if len(self.sessions) < 20000:
            return
        horizon = now - self.history_days * 86400
        for sid in [s for s, r in self.sessions.items()
                    if r.get("status") == "closed" and _num(r.get("ended_at")) < horizon]:
            self._forget(sid)

    # ------------------------------------------------------------------ the board
    def take_changes(self) -> tuple[set[str], set[str]]:
        """The CPs changed and removed since the last call (for a ``delta``)."""
        dirty, gone = self.dirty, self.gone
        self.dirty, self.gone = set(), set()
        return dirty, gone

    def board(self, operator: bool, now: float | None = None) -> dict[str, Any]:
        """The whole board as JSON data; driver ids only for an operator."""
        now = time.time() if now is None else now
        cps = [self._cp(s.cp_id, operator, now) for s in
               sorted(self.net.cps.values(), key=lambda s: s.cp_id)]
        return self._head(cps, operator, now)

    def board_json(self, operator: bool) -> bytes:
        """``board`` as JSON, from each row's JSON kept until the row changes: a board of
        thousands of CPs costs its changed rows, not all of them, at each publish."""
        head = self._head([], operator, time.time())
        head["cps"] = _CPS
        rows = b",".join(self._row_json(cp_id, operator) for cp_id in sorted(self.net.cps))
        return _json(head).replace(_json(_CPS), b"[" + rows + b"]", 1)

    def delta_json(self, dirty: set[str], gone: set[str], operator: bool) -> bytes:
        """What changed since the board before: the changed rows, the removed ids, and
        the head (central, counts, sites) whole. A page applies it to its board."""
        head = self._head([], operator, time.time())
        head["cps"] = _CPS
        head["removed"] = sorted(gone)
        rows = b",".join(self._row_json(cp_id, operator) for cp_id in sorted(dirty)
                         if cp_id in self.net.cps)
        return _json(head).replace(_json(_CPS), b"[" + rows + b"]", 1)

    def _row_json(self, cp_id: str, operator: bool) -> bytes:
        row = self._rows.get((cp_id, operator))
        if row is None:
            row = self._rows[(cp_id, operator)] = _json(self._cp(cp_id, operator, 0.0))
        return row

    def _head(self, cps: list[Any], operator: bool, now: float) -> dict[str, Any]:
        """Central, Kafka, the counts of every CP by state and the sites, with ``cps``."""
        by_state = Counter(s.state for s in self.net.cps.values())
        counts = {str(state): by_state.get(state, 0) for state in CPState}
        return {
            "central": self.central_doc(),
            "kafka": {"available": self.kafka_down_since is None,
                      "since": self.kafka_down_since},
            "counts": counts,
            "cps": cps,
            "sites": [{"site": s.site, "limit_kw": s.limit_kw, "load_kw": s.load_kw,
                       "supplies": s.supplies, "waiting": s.waiting}
                      for _, s in sorted(self.net.sites.items())],
            "operator": operator,
            "at": now,
        }

    def central_doc(self) -> dict[str, Any]:
        c = self.net.central
        return {
            "available": self.net.central_available(),
            "central": c.central if c else None,
            "started_at": c.started_at if c else None,
            "epoch": c.epoch if c else None,
            "last_heartbeat": c.ts if c else None,
            "standbys": self.net.standbys_ready(),
        }

    def _cp(self, cp_id: str, operator: bool, now: float) -> dict[str, Any]:
        s = self.net.cps[cp_id]
        out: dict[str, Any] = {
            "cp_id": s.cp_id, "location": s.location, "price_eur_kwh": s.price_eur_kwh,
            "state": str(s.state), "label": LABEL[s.state], "class": STATE_CLASS[s.state],
            # a disconnected CP's detail is its last_seen, for the page to write (no clock
            # of this machine in a row: a row stays as it is until its CP changes)
            "detail": s.detail if s.state is CPState.DESCONECTADO else detail(s, now),
            "proven": s.proven, "trust": trust_word(s.proven, s.state),
            "site": s.site or None, "via": s.via or None, "charger": charger_status(s) or None,
            "kw": s.kw, "free": s.state is CPState.ACTIVADO,
            "last_seen": s.last_seen or None, "supply": None,
        }
        sid = self.open_by_cp.get(cp_id)
        rec = self.sessions.get(sid) if sid else None
        if rec is not None and s.state is CPState.SUMINISTRANDO:
            supply = {"consumo_kwh": _num(rec.get("consumo_kwh")),
                      "importe_eur": _num(rec.get("importe_eur")),
                      "started_at": rec.get("started_at")}
            if operator:
                supply |= {"driver_id": rec.get("driver_id"), "session_id": sid}
            out["supply"] = supply
        return out

    def cp(self, cp_id: str, operator: bool, now: float | None = None) -> dict[str, Any] | None:
        """One CP: its row, and for an operator its sessions and the running one's curve."""
        if cp_id not in self.net.cps:
            return None
        out = self._cp(cp_id, operator, time.time() if now is None else now)
        if operator:
            out["sessions"] = [_public_session(r) for r in self.session_list(cp_id=cp_id)][:50]
            sid = self.open_by_cp.get(cp_id)
            out["curve"] = [[round(t, 3), k] for t, k in self.curves.get(sid, [])] if sid \
                else []
        return out

    # ------------------------------------------------------------------ sessions
    def session_list(self, status: str | None = None, since: float = 0.0,
                     cp_id: str | None = None, driver_id: str | None = None
                     ) -> list[dict[str, Any]]:
        """Sessions newest first: ``status`` open or closed, started at or after ``since``."""
        out = []
        for rec in self.sessions.values():
            closed = rec.get("status") == "closed"
            if status == "open" and closed or status == "closed" and not closed:
                continue
            if _num(rec.get("started_at")) < since:
                continue
            if cp_id is not None and rec.get("cp_id") != cp_id:
                continue
            if driver_id is not None and rec.get("driver_id") != driver_id:
                continue
            out.append(rec)
        out.sort(key=lambda r: _num(r.get("started_at")), reverse=True)
        return out

    def sessions_doc(self, status: str | None, since: float, cp_id: str | None = None,
                     driver_id: str | None = None, limit: int = 1000) -> dict[str, Any]:
        found = self.session_list(status, since, cp_id, driver_id)
        return {"count": len(found), "sessions": [_public_session(r) for r in found[:limit]]}

    def tickets_csv(self, since: float = 0.0, cp_id: str | None = None,
                    driver_id: str | None = None) -> str:
        """Closed sessions (their tickets) as CSV, oldest first, times in local ISO 8601."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow(TICKET_COLUMNS)
        for rec in reversed(self.session_list("closed", since, cp_id, driver_id)):
            row = []
            for col in TICKET_COLUMNS:
                value = rec.get(col)
                if col in ("started_at", "ended_at"):
                    value = iso(_num(value))
                row.append(_cell("" if value is None else value))
            writer.writerow(row)
        return buf.getvalue()


def _public_session(rec: dict[str, Any]) -> dict[str, Any]:
    closed = rec.get("status") == "closed"
    return {
        "session_id": rec.get("session_id"), "cp_id": rec.get("cp_id"),
        "driver_id": rec.get("driver_id"), "status": "closed" if closed else "open",
        "started_at": rec.get("started_at"), "ended_at": rec.get("ended_at"),
        "consumo_kwh": _num(rec.get("consumo_kwh")),
        "importe_eur": _num(rec.get("importe_eur")),
        "price_eur_kwh": _num(rec.get("price_eur_kwh")),
        "reason": rec.get("reason") or rec.get("end_reason"), "ticket_id": rec.get("ticket_id"),
    }


_CPS = f"@cps-{secrets.token_hex(8)}@"  # where a board's rows go in its JSON


def _json(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _num(value: Any) -> float:
    try:
        return float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: ids come from the network, and text
    starting with = + - @ is a formula in Excel and LibreOffice."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value

"""The audit log: an append-only JSON-lines record of who did what, from where."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from evc.errors import StoreError

if TYPE_CHECKING:
    from evc.store.database import Store

RING = 500  # events of the audit log also kept as stored records (``AuditRing``)


class _Log(Protocol):
    def write(self, event: str, **fields: Any) -> None: ...


class AuditLog:
    """An append-only JSON-lines record of who did what, from where (one line per event).

    Registrations, refusals, operator commands, credential changes, rejected messages:
    ``write("refused", cp_id="CP-01", source="10.0.0.3:51234", code="auth")``. Each line
    is flushed as it is written; a line torn by a kill is skipped by readers.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._out = os.fdopen(fd, "a", encoding="utf-8")
        except OSError as exc:
            raise StoreError(f"cannot open the audit log {self.path}: {exc.strerror}") from exc

    def write(self, event: str, **fields: Any) -> None:
        record = {"ts": round(time.time(), 3), "event": event, **fields}
        try:
            self._out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            self._out.flush()
        except (OSError, ValueError):
            pass  # a full disk must not stop central; the log says so elsewhere

    def close(self) -> None:
        try:
            self._out.close()
        except OSError:
            pass


def read_audit(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every whole line of an audit log, oldest first."""
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


class AuditRing:
    """The audit log, with its last ``RING`` events also kept as stored records (table
    ``audit``, slot = the event's number modulo ``RING``): they go to the changelog with
    the rest of central's state, so the web board shows them to operators from Kafka,
    and a central that takes over goes on numbering. Used on the brain's thread only."""

    def __init__(self, log: _Log, store: Store) -> None:
        from evc.store.database import AUDIT

        self.log, self.store, self.table = log, store, AUDIT
        self.seq = max((int(r.get("seq", 0)) for r in store.all(AUDIT)), default=0)

    def write(self, event: str, **fields: Any) -> None:
        self.log.write(event, **fields)
        self.seq += 1
        slot = str(self.seq % RING)
        record = {"slot": slot, "seq": self.seq, "ts": round(time.time(), 3), "event": event}
        record |= {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
                   for k, v in fields.items() if k not in record}
        self.store.remove(self.table, slot)  # the slot's older event goes whole
        self.store.put(self.table, record)

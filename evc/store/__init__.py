"""Persistence: the only module that imports tinydb.

Central's registry (charge points), sessions and tickets live in one TinyDB
JSON file. TinyDB rewrites the whole file on each write and is not
thread-safe, so:

* only one thread (central's brain) uses a ``Store``;
* changes are collected in memory (dicts indexed by key) and written by
  ``commit()``, once per batch of events, never per telemetry message;
* every write goes to a temporary file in the same folder, is fsynced, then
  ``os.replace``d over the old one: a kill at any moment leaves either the
  previous or the new complete file, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage

from evc.errors import StoreError

CPS = "cps"
SESSIONS = "sessions"


class AtomicJSONStorage(Storage):
    """TinyDB storage writing through temp file + fsync + os.replace."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create folder for {self.path}: {exc.strerror}") from None
        # One writer: a temp file left now is from a writer killed mid-write.
        for stale in self.path.parent.glob(f".{self.path.name}.*"):
            stale.unlink(missing_ok=True)

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror}") from None
        if not text.strip():
            return None
        try:
            data = json.loads(text)
        except ValueError:
            raise StoreError(f"{self.path} is not a valid evc database (not JSON)") from None
        if not isinstance(data, dict):
            raise StoreError(f"{self.path} is not a valid evc database")
        return data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        self.write_bytes(
            json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))

    def write_bytes(self, payload: bytes) -> None:
        """Replace the file with ``payload`` (already JSON), atomically."""
        tmp_path = None
        try:
            fd, tmp_path = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(payload)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_path, self.path)
            tmp_path = None
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror}") from None
        finally:
            if tmp_path is not None:
                try:
                    os.unlink(tmp_path)
                except OSError:
                    pass

    def close(self) -> None:
        pass


class Store:
    """Central's database. Records are plain dicts keyed by ``cp_id`` / ``session_id``.

    TinyDB reads the file at start; from then on the records live in dicts indexed
    by key (every put is O(1), never a table scan) and ``commit()`` hands the
    whole database to TinyDB's storage in one atomic write. Closed sessions beyond
    ``keep_closed`` move, oldest first, to an append-only archive beside the file
    (``<name>.sessions.jsonl``), so the file TinyDB rewrites stays small.
    """

    def __init__(self, path: str | os.PathLike[str], *, keep_closed: int = 1000) -> None:
        self.path = Path(path)
        self.archive_path = self.path.with_name(self.path.stem + ".sessions.jsonl")
        self.keep_closed = keep_closed
        try:
            self._db = TinyDB(self.path, storage=AtomicJSONStorage)
            cps = self._db.table(CPS, cache_size=0).all()
            sessions = self._db.table(SESSIONS, cache_size=0).all()
            self._cps: dict[str, dict[str, Any]] = {d["cp_id"]: dict(d) for d in cps}
            self._sessions: dict[str, dict[str, Any]] = {
                d["session_id"]: dict(d) for d in sessions}
            self._storage: AtomicJSONStorage = self._db.storage  # type: ignore[assignment]
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"{self.path} is not a valid evc database ({exc})") from None
        # Each record's JSON text, re-encoded only when the record changed: a commit
        # joins these instead of encoding the whole database again.
        self._json: dict[str, dict[str, str]] = {CPS: {}, SESSIONS: {}}
        self._changed: dict[str, set[str]] = {CPS: set(self._cps), SESSIONS: set(self._sessions)}
        self._dirty = False

    # ------------------------------------------------------------------ charge points
    def cps(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._cps.values()]

    def get_cp(self, cp_id: str) -> dict[str, Any] | None:
        rec = self._cps.get(cp_id)
        return dict(rec) if rec is not None else None

    def put_cp(self, record: dict[str, Any]) -> None:
        """Insert or update (merge) the CP with ``record['cp_id']``."""
        self._cps.setdefault(record["cp_id"], {}).update(record)
        self._changed[CPS].add(record["cp_id"])
        self._dirty = True

    def remove_cp(self, cp_id: str) -> bool:
        removed = self._cps.pop(cp_id, None) is not None
        self._json[CPS].pop(cp_id, None)
        self._changed[CPS].discard(cp_id)
        self._dirty = self._dirty or removed
        return removed

    # ------------------------------------------------------------------ sessions
    def sessions(self, **match: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in self._sessions.values()
                if all(r.get(k) == v for k, v in match.items())]

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        rec = self._sessions.get(session_id)
        return dict(rec) if rec is not None else None

    def put_session(self, record: dict[str, Any]) -> None:
        self._sessions.setdefault(record["session_id"], {}).update(record)
        self._changed[SESSIONS].add(record["session_id"])
        self._dirty = True

    def archived_sessions(self) -> list[dict[str, Any]]:
        """Closed sessions moved out of the database file, oldest first."""
        try:
            text = self.archive_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot read {self.archive_path}: {exc.strerror}") from None
        seen: dict[str, dict[str, Any]] = {}
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill mid-append
            seen[rec.get("session_id", "")] = rec
        return list(seen.values())

    # ------------------------------------------------------------------ lifecycle
    @property
    def dirty(self) -> bool:
        return self._dirty

    def _archive_old_sessions(self) -> None:
        closed = [r for r in self._sessions.values() if r.get("status") == "closed"]
        excess = len(closed) - self.keep_closed
        if excess <= 0:
            return
        closed.sort(key=lambda r: r.get("ended_at") or 0.0)
        old = closed[:excess]
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in old)
        try:  # appended and fsynced before the database forgets them
            with open(self.archive_path, "a", encoding="utf-8") as out:
                out.write(lines)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise StoreError(f"cannot write {self.archive_path}: {exc.strerror}") from None
        for rec in old:
            del self._sessions[rec["session_id"]]
            self._json[SESSIONS].pop(rec["session_id"], None)
            self._changed[SESSIONS].discard(rec["session_id"])

    def commit(self) -> None:
        """Write every change since the last commit, atomically, in one write."""
        if not self._dirty:
            return
        self._archive_old_sessions()
        tables = []
        for name, records in ((CPS, self._cps), (SESSIONS, self._sessions)):
            texts = self._json[name]
            for key in self._changed[name]:
                texts[key] = json.dumps(records[key], ensure_ascii=False, separators=(",", ":"))
            self._changed[name].clear()
            body = ",".join(f'"{i}":{text}' for i, text in enumerate(texts.values(), start=1))
            tables.append(f'"{name}":{{{body}}}')
        self._storage.write_bytes(("{" + ",".join(tables) + "}").encode("utf-8"))
        self._dirty = False

    def close(self) -> None:
        self.commit()
        self._db.close()

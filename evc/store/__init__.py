"""Persistence: the only module that imports tinydb.

Central's registry (charge points), sessions and tickets live in one TinyDB
JSON file. TinyDB rewrites the whole file on each write and is not
thread-safe, so:

* only one thread (central's brain) uses a ``Store``;
* changes are collected in memory and written by ``commit()``, once per batch
  of events, never per telemetry message;
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

from tinydb import Query, TinyDB
from tinydb.middlewares import CachingMiddleware
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
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
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


class _Cache(CachingMiddleware):
    WRITE_CACHE_SIZE = 1_000_000_000  # only commit() writes


class Store:
    """Central's database. Records are plain dicts keyed by ``cp_id`` / ``session_id``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._storage = _Cache(AtomicJSONStorage)
        try:
            self._db = TinyDB(self.path, storage=self._storage)
            self._cps = self._db.table(CPS, cache_size=0)
            self._sessions = self._db.table(SESSIONS, cache_size=0)
            self._cps.all()  # read now: a broken file fails at start, not later
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"{self.path} is not a valid evc database ({exc})") from None
        self._dirty = False

    # ------------------------------------------------------------------ charge points
    def cps(self) -> list[dict[str, Any]]:
        return [dict(doc) for doc in self._cps.all()]

    def get_cp(self, cp_id: str) -> dict[str, Any] | None:
        doc = self._cps.get(Query().cp_id == cp_id)
        return dict(doc) if doc else None  # type: ignore[arg-type]

    def put_cp(self, record: dict[str, Any]) -> None:
        """Insert or update (merge) the CP with ``record['cp_id']``."""
        self._cps.upsert(record, Query().cp_id == record["cp_id"])
        self._dirty = True

    def remove_cp(self, cp_id: str) -> bool:
        removed = self._cps.remove(Query().cp_id == cp_id)
        self._dirty = self._dirty or bool(removed)
        return bool(removed)

    # ------------------------------------------------------------------ sessions
    def sessions(self, **match: Any) -> list[dict[str, Any]]:
        if not match:
            return [dict(doc) for doc in self._sessions.all()]
        return [dict(doc) for doc in self._sessions.search(Query().fragment(match))]

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        doc = self._sessions.get(Query().session_id == session_id)
        return dict(doc) if doc else None  # type: ignore[arg-type]

    def put_session(self, record: dict[str, Any]) -> None:
        self._sessions.upsert(record, Query().session_id == record["session_id"])
        self._dirty = True

    # ------------------------------------------------------------------ lifecycle
    @property
    def dirty(self) -> bool:
        return self._dirty

    def commit(self) -> None:
        """Write every change since the last commit, atomically."""
        if self._dirty:
            self._storage.flush()
            self._dirty = False

    def close(self) -> None:
        self.commit()
        self._db.close()

"""Persistence: the only module that imports tinydb.

Central's registry (charge points), sessions and tickets, the messages it has
decided but Kafka has not yet confirmed (the outbox), and the Kafka offsets it
has applied, live in one TinyDB JSON file: one commit holds a batch's state
change, what it announces and how far it read, so a crash between any two
instructions neither forgets nor repeats anything. TinyDB rewrites the whole
file on each write and is not thread-safe, so:

* only one thread (central's brain) uses a ``Store``;
* changes are collected in memory (dicts indexed by key) and written by
  ``commit()``, once per batch of events, never per telemetry message;
* every write goes to a temporary file in the same folder, is fsynced, then
  ``os.replace``d over the old one: a kill at any moment leaves either the
  previous or the new complete file, never a torn one.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage

from evc.errors import StoreError

CPS = "cps"
SESSIONS = "sessions"
OUTBOX = "outbox"
OFFSETS = "offsets"
META = "meta"
DRIVERS = "drivers"
TABLES = {CPS: "cp_id", SESSIONS: "session_id", OUTBOX: "msg_id", OFFSETS: "tp", META: "name",
          DRIVERS: "driver_id"}
"""Every table and the field that keys its records."""


def write_atomic(path: Path, payload: bytes) -> None:
    """Replace ``path`` with ``payload``: temp file, fsync, rename, fsync of the folder.

    A kill at any moment leaves the old or the new file, whole.
    """
    tmp_path = None
    try:
        fd, tmp_path = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_path, path)
        tmp_path = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        if tmp_path is not None:
            try:
                os.unlink(tmp_path)
            except OSError:
                pass


class JsonFile:
    """A small JSON document kept atomically (engine and driver journals)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create folder for {self.path}: {exc.strerror}") from exc
        for stale in self.path.parent.glob(f".{self.path.name}.*"):
            stale.unlink(missing_ok=True)

    def load(self) -> dict[str, Any]:
        """The saved document, or {} when there is none yet."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror}") from exc
        except ValueError:
            raise StoreError(f"{self.path} is not a valid evc journal (not JSON); "
                             "move it away to start afresh") from None
        if not isinstance(data, dict):
            raise StoreError(f"{self.path} is not a valid evc journal")
        return data

    def save(self, data: dict[str, Any]) -> None:
        write_atomic(self.path, json.dumps(data, ensure_ascii=False,
                                           separators=(",", ":")).encode("utf-8"))


class FileLock:
    """An exclusive lock on ``<path>.lock`` held while a process uses ``path``."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path.with_name(path.name + ".lock")
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(self._fd, 200).decode("utf-8", "replace").strip() or "?"
            os.close(self._fd)
            self._fd = None
            raise StoreError(f"{path} is in use by another {what} ({holder}); "
                             "stop it first, or give another file") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


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
        write_atomic(self.path, payload)

    def close(self) -> None:
        pass


class Store:
    """Central's database. Records are plain dicts, each table keyed by one field.

    TinyDB reads the file at start; from then on the records live in dicts indexed
    by key (every put is O(1), never a table scan) and ``commit()`` hands the
    whole database to TinyDB's storage in one atomic write. Closed sessions beyond
    ``keep_closed`` move, oldest first, to an append-only archive beside the file
    (``<name>.sessions.jsonl``), so the file TinyDB rewrites stays small.
    With ``lock=True`` a second process cannot open the same file.
    """

    def __init__(self, path: str | os.PathLike[str], *, keep_closed: int = 1000,
                 lock: bool = False) -> None:
        self.path = Path(path)
        self.archive_path = self.path.with_name(self.path.stem + ".sessions.jsonl")
        self.keep_closed = keep_closed
        self._lock: FileLock | None = None
        if lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create folder for {self.path}: "
                                 f"{exc.strerror}") from exc
            self._lock = FileLock(self.path, "central")
        try:
            self._db = TinyDB(self.path, storage=AtomicJSONStorage)
            self._tables: dict[str, dict[str, dict[str, Any]]] = {}
            for name, key in TABLES.items():
                rows = self._db.table(name, cache_size=0).all()
                self._tables[name] = {str(d[key]): dict(d) for d in rows}
            self._storage: AtomicJSONStorage = self._db.storage  # type: ignore[assignment]
        except StoreError:
            self._release()
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._release()
            raise StoreError(f"{self.path} is not a valid evc database ({exc})") from None
        # Each record's JSON text, re-encoded only when the record changed: a commit
        # joins these instead of encoding the whole database again.
        self._json: dict[str, dict[str, str]] = {name: {} for name in TABLES}
        self._changed: dict[str, set[str]] = {name: set(rows)
                                               for name, rows in self._tables.items()}
        self._dirty = False

    # ------------------------------------------------------------------ any table
    def put(self, table: str, record: dict[str, Any]) -> None:
        """Insert or update (merge) the record with ``record[<key field>]``."""
        key = str(record[TABLES[table]])
        self._tables[table].setdefault(key, {}).update(record)
        self._changed[table].add(key)
        self._dirty = True

    def get(self, table: str, key: str) -> dict[str, Any] | None:
        rec = self._tables[table].get(key)
        return dict(rec) if rec is not None else None

    def remove(self, table: str, key: str) -> bool:
        removed = self._tables[table].pop(key, None) is not None
        self._json[table].pop(key, None)
        self._changed[table].discard(key)
        self._dirty = self._dirty or removed
        return removed

    def all(self, table: str, **match: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in self._tables[table].values()
                if all(r.get(k) == v for k, v in match.items())]

    # ------------------------------------------------------------------ charge points
    def cps(self) -> list[dict[str, Any]]:
        return self.all(CPS)

    def get_cp(self, cp_id: str) -> dict[str, Any] | None:
        return self.get(CPS, cp_id)

    def put_cp(self, record: dict[str, Any]) -> None:
        self.put(CPS, record)

    def remove_cp(self, cp_id: str) -> bool:
        return self.remove(CPS, cp_id)

    # ------------------------------------------------------------------ sessions
    def sessions(self, **match: Any) -> list[dict[str, Any]]:
        return self.all(SESSIONS, **match)

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        return self.get(SESSIONS, session_id)

    def put_session(self, record: dict[str, Any]) -> None:
        self.put(SESSIONS, record)

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

    # ------------------------------------------------------------------ outbox and offsets
    def outbox(self) -> list[dict[str, Any]]:
        """Messages decided but not yet confirmed by Kafka, in the order they were decided."""
        return sorted(self.all(OUTBOX), key=lambda r: r.get("seq", 0))

    def offsets(self) -> dict[tuple[str, int], int]:
        """The next offset to apply, per (topic, partition) already read."""
        out: dict[tuple[str, int], int] = {}
        for rec in self._tables[OFFSETS].values():
            topic, _, partition = str(rec["tp"]).rpartition(":")
            out[(topic, int(partition))] = int(rec["next"])
        return out

    def set_offset(self, topic: str, partition: int, next_offset: int) -> None:
        self.put(OFFSETS, {"tp": f"{topic}:{partition}", "next": next_offset})

    # ------------------------------------------------------------------ lifecycle
    @property
    def dirty(self) -> bool:
        return self._dirty

    def _archive_old_sessions(self) -> None:
        sessions = self._tables[SESSIONS]
        closed = [r for r in sessions.values() if r.get("status") == "closed"]
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
            self.remove(SESSIONS, str(rec["session_id"]))

    def commit(self) -> None:
        """Write every change since the last commit, atomically, in one write."""
        if not self._dirty:
            return
        self._archive_old_sessions()
        tables = []
        for name, records in self._tables.items():
            texts = self._json[name]
            for key in self._changed[name]:
                texts[key] = json.dumps(records[key], ensure_ascii=False, separators=(",", ":"))
            self._changed[name].clear()
            body = ",".join(f'"{i}":{text}' for i, text in enumerate(texts.values(), start=1))
            tables.append(f'"{name}":{{{body}}}')
        self._storage.write_bytes(("{" + ",".join(tables) + "}").encode("utf-8"))
        self._dirty = False

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def close(self) -> None:
        try:
            self.commit()
            self._db.close()
        finally:
            self._release()


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

"""Central's database.

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
  previous or the new complete file, never a torn one."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage

from evc.errors import StoreError
from evc.store.files import FileLock, make_folder_for, prepare_atomic, write_atomic
from evc.store.journal import fsync_dir, journal_path, journals, replay

CPS = "cps"
SESSIONS = "sessions"
OUTBOX = "outbox"
OFFSETS = "offsets"
META = "meta"
DRIVERS = "drivers"
SITES = "sites"
OPERATORS = "operators"  # evc web's accounts: name -> the operator's key (scrypt)
AUDIT = "audit"  # the audit log's last events, a ring of slots (store/audit.py: AuditRing)
LOCAL_TABLES = frozenset({OUTBOX})  # journaled here, never replicated (see ``replica``)
TABLES = {CPS: "cp_id", SESSIONS: "session_id", OUTBOX: "msg_id", OFFSETS: "tp", META: "name",
          DRIVERS: "driver_id", SITES: "site", OPERATORS: "name", AUDIT: "slot"}
"""Every table and the field that keys its records."""

class AtomicJSONStorage(Storage):
    """TinyDB storage writing through temp file + fsync + os.replace."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        prepare_atomic(self.path)  # one writer: a temp file left is a killed writer's

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

    TinyDB reads the file at start (and the journals left by a kill are replayed
    over it); from then on the records live in dicts indexed by key (every put is
    O(1), never a table scan), ``commit()`` appends the changed ones to the journal,
    and a compaction hands the whole database to TinyDB's storage in one atomic
    write once the journal passes ``compact_bytes``. Closed sessions beyond
    ``keep_closed`` move, oldest first, to an append-only archive beside the file
    (``<name>.sessions.jsonl``), so the file TinyDB rewrites stays small.
    With ``lock=True`` a second process cannot open the same file.
    """

    def __init__(self, path: str | os.PathLike[str], *, keep_closed: int = 1000,
                 lock: bool = False, compact_bytes: int = 8 << 20) -> None:
        self.path = Path(path)
        self.archive_path = self.path.with_name(self.path.stem + ".sessions.jsonl")
        self.keep_closed = keep_closed
        self._lock: FileLock | None = None
        if lock:
            make_folder_for(self.path)
            self._lock = FileLock(self.path, "central")
        try:
            self._db = TinyDB(self.path, storage=AtomicJSONStorage)
            self._tables: dict[str, dict[str, dict[str, Any]]] = {}
            for name, key in TABLES.items():
                rows = self._db.table(name, cache_size=0).all()
                self._tables[name] = {str(d[key]): dict(d) for d in rows}
            self._storage: AtomicJSONStorage = self._db.storage  # type: ignore[assignment]
            found = journals(self.path)
            for _, journal in found:
                replay(journal, self._tables)
        except StoreError:
            self._release()
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._release()
            raise StoreError(f"{self.path} is not a valid evc database ({exc})") from None
        # Each record's JSON text, re-encoded only when the record changed: a journal
        # line holds only these, and a compaction joins them.
        self._json: dict[str, dict[str, str]] = {
            name: {key: _dumps(rec) for key, rec in rows.items()}
            for name, rows in self._tables.items()}
        self._changed: dict[str, set[str]] = {name: set() for name in TABLES}
        self._removed: dict[str, set[str]] = {name: set() for name in TABLES}
        # the closed sessions held (kept up to date by commit from what it changed, not
        # by looking at every session each time: thousands are open on a large network)
        self._closed = {key for key, rec in self._tables[SESSIONS].items()
                        if rec.get("status") == "closed"}
        self._dirty = False
        self.compact_bytes = compact_bytes
        self._journal_fd: int | None = None
        self._journal_bytes = 0
        self._gen = max((gen for gen, _ in found), default=0)
        self._compactor: threading.Thread | None = None
        self._compacted = -1  # the newest journal generation the file includes
        self._compact_error: StoreError | None = None
        # Called by commit() with the batch's changes, as ("<table>/<key>", record JSON or
        # None for a removal): the active central's changelog (docs/ARCHITECTURE.md).
        # The outbox stays out of it: the changelog is written in the same transactions as
        # the messages the batch decided, so a reader of the changelog never has to send
        # them again (whatever it sees was sent with it).
        self.replica: Callable[[list[tuple[str, str | None]]], None] | None = None
        # Changes the replica may get late (``put(..., late=True)``): a running supply's
        # readings and how far the readings were read. They reach it at most this many
        # seconds after the commit that journaled them, each key's latest version once;
        # a reader that takes over reads the readings again from the offset it has (a
        # reading only ever raises a supply's figures, so reading one twice changes
        # nothing), and any other change of the same record takes it along at once.
        self.late_every = 2.0
        self._late: dict[str, str] = {}  # "<table>/<key>" -> its latest JSON, not handed yet
        self._late_keys: dict[str, set[str]] = {name: set() for name in TABLES}
        self._late_due = 0.0  # monotonic: when the late ones go (0: with the next commit)
        if found or not self.path.exists():  # start from a whole, current TinyDB file
            self._compact(wait=True)

    # ------------------------------------------------------------------ any table
    def put(self, table: str, record: dict[str, Any], *, late: bool = False) -> None:
        """Insert or update (merge) the record with ``record[<key field>]``. ``late``: the
        replica may get this change late (see ``late_every``); journaled all the same."""
        key = str(record[TABLES[table]])
        self._tables[table].setdefault(key, {}).update(record)
        changed = self._changed[table]
        if late:
            if key not in changed:  # an earlier change in this batch goes now
                self._late_keys[table].add(key)
        else:
            self._late_keys[table].discard(key)
        changed.add(key)
        self._removed[table].discard(key)
        self._dirty = True

    def get(self, table: str, key: str) -> dict[str, Any] | None:
        rec = self._tables[table].get(key)
        return dict(rec) if rec is not None else None

    def remove(self, table: str, key: str) -> bool:
        removed = self._tables[table].pop(key, None) is not None
        self._json[table].pop(key, None)
        self._changed[table].discard(key)
        self._late_keys[table].discard(key)
        if removed:
            self._removed[table].add(key)
            self._dirty = True
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

    def set_offset(self, topic: str, partition: int, next_offset: int, *,
                   late: bool = False) -> None:
        self.put(OFFSETS, {"tp": f"{topic}:{partition}", "next": next_offset}, late=late)

    def offset_is_late(self, topic: str, partition: int) -> bool:
        """Whether how far this partition was read has not reached the replica yet (it
        was set ``late``): then an offset of it that must go at once takes every late
        change along, or the replica would skip the late ones' records."""
        key = f"{topic}:{partition}"
        return key in self._late_keys[OFFSETS] or f"{OFFSETS}/{key}" in self._late

    # ------------------------------------------------------------------ replication
    def changes(self) -> list[tuple[str, str]]:
        """Every record as a change ("<table>/<key>", JSON): the whole database, for a
        changelog that is still empty."""
        return [(f"{name}/{key}", text) for name, texts in self._json.items()
                if name not in LOCAL_TABLES for key, text in texts.items()]

    def apply_changes(self, changes: Iterable[tuple[str, str | None]], *,
                      replace: bool = False) -> int:
        """Records from the changelog (a standby following the active central), committed
        by the next ``commit()``. ``replace``: they are the whole database (the rest goes,
        unless none of them is a valid record). A change naming no table, or whose record
        is not a JSON object, is skipped. Returns how many were applied."""
        valid: list[tuple[str, str, dict[str, Any] | None]] = []
        for ident, text in changes:
            name, _, key = ident.partition("/")
            if name not in TABLES or not key:
                continue
            if text is None:
                valid.append((name, key, None))
                continue
            try:
                record = json.loads(text)
            except ValueError:
                continue
            if isinstance(record, dict):
                valid.append((name, key, record))
        if replace and valid:
            for name in TABLES:
                for key in list(self._tables[name]):
                    self.remove(name, key)
        for name, key, record in valid:
            if record is None:
                self.remove(name, key)
            else:
                self._tables[name][key] = record
                self._changed[name].add(key)
                self._removed[name].discard(key)
                self._dirty = True
        return len(valid)

    # ------------------------------------------------------------------ lifecycle
    @property
    def dirty(self) -> bool:
        return self._dirty

    def _archive_old_sessions(self) -> None:
        sessions = self._tables[SESSIONS]
        for key in self._changed[SESSIONS]:
            if sessions[key].get("status") == "closed":
                self._closed.add(key)
            else:
                self._closed.discard(key)
        self._closed -= self._removed[SESSIONS]
        excess = len(self._closed) - self.keep_closed
        if excess <= 0:
            return
        closed = [sessions[key] for key in self._closed]
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
            self._closed.discard(str(rec["session_id"]))

    def flush_late(self) -> None:
        """The next commit hands the replica every late change too."""
        self._late_due = 0.0

    def commit(self) -> None:
        """Make every change since the last commit durable: one journal line, fsynced.
        Then hand the replica this batch's changes, and the late ones that are due.

        Raises StoreError when the disk refuses (then nothing of the batch may be
        announced); a background compaction that failed is reported here too.
        """
        if self._compact_error is not None:
            error, self._compact_error = self._compact_error, None
            raise error
        if self._dirty:
            changes = self._write_batch()
        else:
            changes = []
        if self.replica is None:
            self._late.clear()
            return
        now = time.monotonic()
        if self._late and now >= self._late_due:
            changes += self._late.items()
            self._late = {}
        if changes:
            self.replica(changes)

    def _write_batch(self) -> list[tuple[str, str | None]]:
        """Journal what changed; return the changes for the replica now (the late ones
        wait in ``_late``)."""
        self._archive_old_sessions()
        puts = []
        changes: list[tuple[str, str | None]] = []
        late = self._late
        for name, records in self._tables.items():
            changed = self._changed[name]
            if not changed:
                continue
            texts = self._json[name]
            parts = []
            replicated = name not in LOCAL_TABLES
            late_keys = self._late_keys[name]
            for key in changed:
                texts[key] = text = _dumps(records[key])
                parts.append(f"{json.dumps(key, ensure_ascii=False)}:{text}")
                if replicated:
                    ident = f"{name}/{key}"
                    if key in late_keys:
                        if not late:  # the first of a round: due in late_every
                            self._late_due = time.monotonic() + self.late_every
                        late[ident] = text
                    else:
                        late.pop(ident, None)  # this version is newer
                        changes.append((ident, text))
            changed.clear()
            late_keys.clear()
            puts.append(f"{json.dumps(name)}:{{{','.join(parts)}}}")
        removed = {name: sorted(keys) for name, keys in self._removed.items() if keys}
        for name, gone in removed.items():
            if name not in LOCAL_TABLES:
                for key in gone:
                    late.pop(f"{name}/{key}", None)
                    changes.append((f"{name}/{key}", None))
        for keys in self._removed.values():
            keys.clear()
        line = f'{{"put":{{{",".join(puts)}}},"remove":{_dumps(removed)}}}\n'
        self._append(line.encode("utf-8"))
        self._dirty = False
        if self._journal_bytes >= self.compact_bytes:
            self._compact(wait=False)
        return changes

    def _append(self, payload: bytes) -> None:
        try:
            if self._journal_fd is None:
                self._gen += 1
                journal = journal_path(self.path, self._gen)
                self._journal_fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                           0o600)
                self._journal_bytes = 0
                fsync_dir(self.path.parent)  # the new journal itself survives a crash
            os.write(self._journal_fd, payload)
            os.fdatasync(self._journal_fd)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}'s journal: {exc.strerror}") from None
        self._journal_bytes += len(payload)

    def _snapshot(self) -> bytes:
        tables = []
        for name, texts in self._json.items():
            body = ",".join(f'"{i}":{text}' for i, text in enumerate(texts.values(), start=1))
            tables.append(f'"{name}":{{{body}}}')
        return ("{" + ",".join(tables) + "}").encode("utf-8")

    def _compact(self, *, wait: bool) -> None:
        """Rewrite the TinyDB file with everything committed; then drop the journals.

        The snapshot is taken here, in the owner thread, and the next commit starts a
        new journal; the file is written by a thread (``wait=False``) or now.
        """
        if self._compactor is not None:
            if not wait and self._compactor.is_alive():
                return  # one at a time: the journal grows a little meanwhile
            self._compactor.join()
            self._compactor = None
        snapshot, upto = self._snapshot(), self._gen
        self._compacted = upto
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        if wait:
            self._write_snapshot(snapshot, upto)
            if self._compact_error is not None:
                error, self._compact_error = self._compact_error, None
                raise error
        else:
            self._compactor = threading.Thread(target=self._write_snapshot,
                                               args=(snapshot, upto),
                                               name="store-compaction", daemon=True)
            self._compactor.start()

    def _write_snapshot(self, snapshot: bytes, upto: int) -> None:
        try:
            self._storage.write_bytes(snapshot)
            for gen, journal in journals(self.path):
                if gen <= upto:
                    journal.unlink(missing_ok=True)
        except (StoreError, OSError) as exc:
            self._compact_error = exc if isinstance(exc, StoreError) else StoreError(
                f"cannot compact {self.path}: {exc.strerror}")

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def close(self) -> None:
        """Commit, and leave one whole, current TinyDB file (no journal)."""
        try:
            self.commit()
            if self._compactor is not None:
                self._compactor.join()
            # the file is rewritten only when it lacks a journal (or the last try failed)
            if self._compacted != self._gen or self._compact_error is not None:
                self._compact_error = None
                self._compact(wait=True)
            self._db.close()
        finally:
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None
            self._release()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def read_database(path: str | os.PathLike[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """What a running central has committed, read without opening its Store:
    the TinyDB file with its journals replayed, as {table: {key: record}}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from None
    tables = {name: {str(rec[key]): rec for rec in data.get(name, {}).values()}
              for name, key in TABLES.items()}
    for _, journal in journals(path):
        try:
            replay(journal, tables)
        except StoreError:
            continue  # compacted away while we read
    return tables

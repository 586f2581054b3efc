"""Persistence: the only package that imports tinydb.

    files      atomic file replacement, JsonFile (the engine's and driver's journals),
               FileLock
    database   Store: central's TinyDB database, its tables, read_database
    journal    the Store's append-only journal of committed batches and its replay
    audit      AuditLog: who did what, from where
    credentials  the secret credential files central hands out
"""

from evc.store.audit import AuditLog, AuditRing, read_audit
from evc.store.database import (
    AUDIT,
    CPS,
    DRIVERS,
    LOCAL_TABLES,
    META,
    OFFSETS,
    OPERATORS,
    OUTBOX,
    SESSIONS,
    SITES,
    TABLES,
    AtomicJSONStorage,
    Store,
    read_database,
)
from evc.store.files import FileLock, JsonFile, write_atomic

__all__ = [
    "AUDIT", "CPS", "DRIVERS", "LOCAL_TABLES", "META", "OFFSETS", "OPERATORS", "OUTBOX", "SESSIONS",
    "SITES", "TABLES",
    "AtomicJSONStorage", "AuditLog", "AuditRing", "FileLock", "JsonFile", "Store", "read_audit",
    "read_database", "write_atomic",
]

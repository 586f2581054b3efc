"""The store's journal: each committed batch as one JSON line, appended and fdatasynced;
replayed over the TinyDB file at start (a line torn by a kill was never committed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evc.errors import StoreError


def journal_path(path: Path, gen: int) -> Path:
    return path.with_name(f"{path.name}.journal.{gen}")


def journals(path: Path) -> list[tuple[int, Path]]:
    """The journals beside ``path``, oldest first."""
    found = []
    for journal in path.parent.glob(f"{path.name}.journal.*"):
        suffix = journal.name.rsplit(".", 1)[1]
        if suffix.isdigit():
            found.append((int(suffix), journal))
    return sorted(found)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replay(journal: Path, tables: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Apply a journal's committed batches to ``tables``, in order.

    Each line holds whole records, so replaying a journal the TinyDB file already
    includes (a kill between a compaction's write and its cleanup) changes nothing.
    A line that does not parse was torn by a kill: that batch was never committed.
    """
    try:
        lines = journal.read_bytes().split(b"\n")
    except OSError as exc:
        raise StoreError(f"cannot read {journal}: {exc.strerror}") from None
    for raw in lines:
        try:
            batch = json.loads(raw)
            puts, removes = batch["put"], batch["remove"]
        except (ValueError, TypeError, KeyError):
            continue
        for name, keys in removes.items():
            for key in keys:
                tables.setdefault(name, {}).pop(str(key), None)
        for name, records in puts.items():
            table = tables.setdefault(name, {})
            for key, rec in records.items():
                table[str(key)] = rec

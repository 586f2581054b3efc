"""Small files that must survive a kill: atomic replacement, a JSON journal file, a
lock that keeps a second process off a file."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from evc.errors import StoreError


def make_folder_for(path: Path) -> None:
    """The folder ``path`` goes in, made if missing (StoreError if it cannot be)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create folder for {path}: {exc.strerror}") from exc


def prepare_atomic(path: Path) -> None:
    """Ready ``path`` for ``write_atomic`` by its one writer: its folder made, and the
    temporary files a writer killed mid-write left beside it removed."""
    make_folder_for(path)
    for stale in path.parent.glob(f".{path.name}.*"):
        stale.unlink(missing_ok=True)


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
        prepare_atomic(self.path)

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

    def set_aside(self, tag: str) -> Path:
        """Move the document out of the way (kept beside it, named with ``tag``): the
        next load finds none."""
        aside = self.path.with_name(f"{self.path.name}.{tag}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            raise StoreError(f"cannot move {self.path} aside: {exc.strerror}") from exc
        return aside


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

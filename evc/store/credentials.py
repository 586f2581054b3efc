"""Secret credentials on disk: one file per CP or driver, readable by its owner only.

Central makes each secret (``protocol.auth.new_secret``) and writes it to
``<credentials dir>/<id>.key`` (mode 0600, folder 0700). The monitor and engine of a CP,
and a driver, find theirs the same way (``find_secret``):

1. ``--credentials FILE``, if given;
2. the environment variable ``EVC_SECRET`` (the secret itself);
3. ``$EVC_CREDENTIALS_DIR/<id>.key``;
4. ``data/credentials/<id>.key`` (beside central's default database).
"""

from __future__ import annotations

import os
from pathlib import Path

from evc.errors import ProtocolError, StoreError
from evc.protocol.auth import check_key
from evc.store import write_atomic

DEFAULT_DIR = Path("data") / "credentials"


def default_dir() -> Path:
    env = os.environ.get("EVC_CREDENTIALS_DIR")
    return Path(env) if env else DEFAULT_DIR


class CredentialFiles:
    """Central's side: writes and removes the secret files it hands out."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, ident: str) -> Path:
        return self.folder / f"{ident}.key"

    def write(self, ident: str, secret: str) -> Path:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            os.chmod(self.folder, 0o700)
        except OSError as exc:
            raise StoreError(f"cannot create {self.folder}: {exc.strerror}") from exc
        return write_secret(self.path(ident), secret)

    def remove(self, ident: str) -> None:
        try:
            self.path(ident).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot remove {self.path(ident)}: {exc.strerror}") from exc


def write_secret(path: Path, secret: str) -> Path:
    """``secret`` into ``path``, readable by its owner only (a folder made for it: 0700)."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise StoreError(f"cannot create {path.parent}: {exc.strerror}") from exc
    old = os.umask(0o077)
    try:
        write_atomic(path, (secret + "\n").encode("ascii"))
    finally:
        os.umask(old)
    return path


def read_secret(path: Path) -> str:
    """The secret in ``path``; a clear StoreError when it is missing or malformed."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise StoreError(f"credential file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read credential file {path}: {exc}") from None
    try:
        return check_key(text, f"credential file {path}")
    except ProtocolError as exc:
        raise StoreError(str(exc)) from None


def find_secret(ident: str, explicit: Path | None = None) -> tuple[str | None, str]:
    """(secret or None, where it was looked for), by the order in the module docstring."""
    if explicit is not None:
        return read_secret(explicit), str(explicit)
    env = os.environ.get("EVC_SECRET")
    if env:
        try:
            return check_key(env, "EVC_SECRET"), "EVC_SECRET"
        except ProtocolError as exc:
            raise StoreError(str(exc)) from None
    path = default_dir() / f"{ident}.key"
    if path.exists():
        return read_secret(path), str(path)
    return None, str(path)


class Credential:
    """One CP's or driver's secret, looked up when needed: until it is found (a monitor
    may start before central has written its file), and again whenever its file changes
    (central rotated it and the new file was copied in)."""

    def __init__(self, ident: str, explicit: Path | None = None) -> None:
        self.ident = ident
        self.explicit = explicit
        self._secret: str | None = None
        self._stamp: float | None = None
        self.source = str(explicit) if explicit else str(default_dir() / f"{ident}.key")

    def store(self, secret: str) -> Path:
        """A credential made by pairing, written where this owner looks for it."""
        path = self.explicit or default_dir() / f"{self.ident}.key"
        write_secret(path, secret)
        self._secret, self._stamp = None, None  # read it back next time
        self.source = str(path)
        return path

    def get(self) -> str | None:
        path = Path(self.source)
        try:
            stamp: float | None = path.stat().st_mtime_ns if path.exists() else None
        except OSError:
            stamp = None
        if self._secret is None or stamp != self._stamp:
            self._secret, self.source = find_secret(self.ident, self.explicit)
            self._stamp = stamp
        return self._secret

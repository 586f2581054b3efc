"""Fixtures of every layer: each test keeps its journals and credentials in its own
folder, and names its topics with its own prefix."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(autouse=True)
def own_state_dirs(tmp_path, monkeypatch) -> None:
    """Engines and drivers keep their journals, and everyone the credentials central
    makes, in this test's folder, never in data/."""
    monkeypatch.setenv("EVC_CP_ENGINE_STATE_DIR", str(tmp_path / "engine-state"))
    monkeypatch.setenv("EVC_DRIVER_STATE_DIR", str(tmp_path / "driver-state"))
    monkeypatch.setenv("EVC_CREDENTIALS_DIR", str(tmp_path / "credentials"))
    monkeypatch.delenv("EVC_SECRET", raising=False)


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own, so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}-"

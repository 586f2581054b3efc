"""Shared fixtures. Flow tests need the real broker: `evc broker start` (see .ci/run)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from evc.bus import KafkaBus, ping
from tests.helpers import Proc
from tests.network import Observer


@pytest.fixture(scope="session")
def kafka() -> str:
    """Bootstrap address of the real broker; the run fails (not skips) without one."""
    bootstrap = os.environ.get("EVC_KAFKA", "127.0.0.1:9092")
    if not ping(bootstrap, timeout=5.0):
        pytest.fail(f"no Kafka broker answers at {bootstrap}: run `evc broker start` "
                    "(or `bash .ci/run`, which starts one)")
    return bootstrap


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


@pytest.fixture
def bus(kafka: str, prefix: str) -> Iterator[KafkaBus]:
    with KafkaBus(kafka, prefix=prefix, client_id="evc-test") as b:
        b.ensure_topics()
        yield b


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Collects the processes a test starts; all are stopped (or killed) at the end."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        try:
            proc.stop(5)
        except AssertionError:
            pass
        finally:
            proc.kill()


@pytest.fixture
def observer(bus: KafkaBus, net) -> Iterator[Observer]:
    """Every message on the test's topics, for the module's ``net``."""
    obs = Observer(bus, net.context)
    yield obs
    obs.close()

"""Fixtures of the flow layer: the real broker (`evc broker start`, see .ci/run), real
`evc` processes, and a network of each test's own. Every test here is a broker test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from evc.bus import KafkaBus, ping
from tests.helpers import Proc
from tests.network import Network, Observer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def kafka() -> str:
    """Bootstrap address of the real broker; the run fails (not skips) without one."""
    bootstrap = os.environ.get("EVC_KAFKA", "127.0.0.1:9092")
    if not ping(bootstrap, timeout=5.0):
        pytest.fail(f"no Kafka broker answers at {bootstrap}: run `evc broker start` "
                    "(or `bash .ci/run`, which starts one)")
    return bootstrap


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
def net(request: pytest.FixtureRequest, kafka: str, prefix: str, tmp_path,
        procs: list[Proc]) -> Network:
    """A network of this test's own (topic prefix, folder, processes). With the
    ``central`` marker (on the test or its module) its central is started, with the
    marker's arguments."""
    network = Network(kafka, prefix, tmp_path, procs)
    marker = request.node.get_closest_marker("central")
    if marker is not None:
        network.start_central(*marker.args)
    return network


@pytest.fixture
def observer(bus: KafkaBus, net: Network) -> Iterator[Observer]:
    """Every message on the test's topics, for the module's ``net``."""
    obs = Observer(bus, net.context)
    yield obs
    obs.close()

"""`evc broker` as a user runs it: clear errors, and a second real broker's lifecycle."""

import os
import shutil
import socket

import pytest

from tests.helpers import free_port, run_evc


def test_status_when_not_running(tmp_path):
    result = run_evc(["broker", "status", "--data-dir", str(tmp_path)])
    assert result.returncode == 3
    assert result.stdout.strip() == "Kafka broker is not running"


def test_stop_when_not_running(tmp_path):
    result = run_evc(["broker", "stop", "--data-dir", str(tmp_path)])
    assert result.returncode == 0 and "not running" in result.stdout


def test_java_missing(tmp_path):
    result = run_evc(["broker", "start", "--data-dir", str(tmp_path)],
                     env={"PATH": str(tmp_path / "empty")})
    assert result.returncode == 1
    assert "Java not found" in result.stderr and "docker compose up -d" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.broker  # needs Java (and Kafka's jars): not the unit layer
def test_maven_missing(tmp_path):
    java = shutil.which("java")
    assert java, "these tests need Java"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "java").symlink_to(os.path.realpath(java))
    result = run_evc(["broker", "start", "--data-dir", str(tmp_path / "data")],
                     env={"PATH": str(bindir), "EVC_BROKER_HOME": str(tmp_path / "home")})
    assert result.returncode == 1
    assert "Maven (mvn) not found" in result.stderr and "docker compose up -d" in result.stderr


def test_bad_listen_address(tmp_path):
    result = run_evc(["broker", "start", "--listen", "localhost:notaport",
                      "--data-dir", str(tmp_path)])
    assert result.returncode == 1
    assert "bad --listen address 'localhost:notaport'" in result.stderr


def test_any_address_needs_advertise(tmp_path):
    result = run_evc(["broker", "start", "--listen", "0.0.0.0:9092", "--data-dir", str(tmp_path)])
    assert result.returncode == 1 and "--advertise" in result.stderr


@pytest.mark.broker  # needs Java (and Kafka's jars): not the unit layer
def test_port_in_use(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_evc(["broker", "start", "--listen", f"127.0.0.1:{port}",
                          "--controller-port", str(free_port()), "--data-dir", str(tmp_path)],
                         timeout=300)
    assert result.returncode == 1
    assert f"port 127.0.0.1:{port} (listen) is already in use" in result.stderr


@pytest.mark.broker  # needs Java (and Kafka's jars): not the unit layer
def test_broker_dying_during_start_shows_its_log(tmp_path):
    # storage formatted for another node id: the broker refuses to start
    kraft = tmp_path / "kraft"
    kraft.mkdir()
    (kraft / "meta.properties").write_text(
        "version=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\nnode.id=7\n"
        "directory.id=AAAAAAAAAAAAAAAAAAAAAA\n")
    port = free_port()
    result = run_evc(["broker", "start", "--listen", f"127.0.0.1:{port}",
                      "--controller-port", str(free_port()), "--data-dir", str(tmp_path),
                      "--timeout", "60"], timeout=300)
    assert result.returncode == 1, result.stdout
    assert "the broker died during start" in result.stderr
    assert "last log lines" in result.stderr
    assert not (tmp_path / "broker.pid").exists()


@pytest.mark.broker
def test_lifecycle_of_a_second_broker(tmp_path):
    port = free_port()
    data = str(tmp_path / "data")
    args = ["--listen", f"127.0.0.1:{port}", "--controller-port", str(free_port()),
            "--data-dir", data]
    try:
        started = run_evc(["broker", "start", *args], timeout=300)
        assert started.returncode == 0, started.stderr
        assert f"Kafka broker running at 127.0.0.1:{port}" in started.stdout
        status = run_evc(["broker", "status", "--data-dir", data])
        assert status.returncode == 0 and f"127.0.0.1:{port}" in status.stdout
        again = run_evc(["broker", "start", *args])
        assert again.returncode == 0 and "already running" in again.stdout
        assert (tmp_path / "data" / "logs" / "server.log").stat().st_size > 0
    finally:
        stopped = run_evc(["broker", "stop", "--data-dir", data], timeout=120)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert run_evc(["broker", "status", "--data-dir", data]).returncode == 3


def test_cluster_ids_never_start_with_a_dash(monkeypatch):
    """Kafka's StorageTool reads `-t -abc…` as an option: 1 random id in 64 began so."""
    import uuid

    from evc.broker import manager

    dash_first = uuid.UUID(bytes=b"\xf8" + bytes(15))  # base64 of 0xf8… begins with '-'
    plain = uuid.UUID(bytes=bytes(16))
    ids = iter([dash_first, dash_first, plain])
    monkeypatch.setattr(manager.uuid, "uuid4", lambda: next(ids))
    assert manager.new_cluster_id() == "AAAAAAAAAAAAAAAAAAAAAA"
    monkeypatch.undo()
    assert not any(manager.new_cluster_id().startswith("-") for _ in range(20000))

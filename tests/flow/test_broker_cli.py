"""`evc broker` as a user runs it with Java: Maven missing, a busy port, a broker dying
during start, and a second real broker's lifecycle."""

import os
import shutil
import socket

from tests.helpers import free_port, run_evc


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

"""`evc broker` as a user runs it: the clear errors that need no Java."""



from tests.helpers import run_evc


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


def test_bad_listen_address(tmp_path):
    result = run_evc(["broker", "start", "--listen", "localhost:notaport",
                      "--data-dir", str(tmp_path)])
    assert result.returncode == 1
    assert "bad --listen address 'localhost:notaport'" in result.stderr


def test_any_address_needs_advertise(tmp_path):
    result = run_evc(["broker", "start", "--listen", "0.0.0.0:9092", "--data-dir", str(tmp_path)])
    assert result.returncode == 1 and "--advertise" in result.stderr


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

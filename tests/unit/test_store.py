import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from evc.errors import StoreError
from evc.store import Store, read_database


def test_records_survive_reopen(tmp_path):
    path = tmp_path / "db" / "central.json"
    store = Store(path)
    store.put_cp({"cp_id": "CP-01", "location": "A", "price_eur_kwh": 0.3})
    store.put_cp({"cp_id": "CP-01", "stopped": True})  # merge
    store.put_session({"session_id": "s1", "cp_id": "CP-01", "open": True})
    assert store.dirty
    store.commit()
    assert not store.dirty
    store.close()
    again = Store(path)
    assert again.get_cp("CP-01") == {"cp_id": "CP-01", "location": "A",
                                     "price_eur_kwh": 0.3, "stopped": True}
    assert again.sessions(open=True)[0]["session_id"] == "s1"
    assert again.remove_cp("CP-01") and not again.remove_cp("CP-01")
    again.put_cp({"cp_id": "CP-02", "location": "B"})
    again.put_session({"session_id": "s1", "open": False})
    again.close()
    from tinydb import TinyDB  # the file stays a plain TinyDB database

    with TinyDB(path) as db:
        assert db.table("cps").all() == [{"cp_id": "CP-02", "location": "B"}]
        assert db.table("sessions").all() == [{"session_id": "s1", "cp_id": "CP-01",
                                               "open": False}]


def test_nothing_is_written_before_commit(tmp_path):
    path = tmp_path / "c.json"
    store = Store(path)
    store.put_cp({"cp_id": "CP-01"})
    assert "CP-01" not in read_database(path)["cps"]
    store.commit()
    assert "CP-01" in read_database(path)["cps"]
    store.close()
    assert "CP-01" in path.read_text()  # a clean stop leaves one whole TinyDB file


def test_broken_file_is_a_clear_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(StoreError, match="not a valid evc database"):
        Store(path)


def test_unwritable_folder_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(StoreError):
            Store(blocker / "sub" / "c.json")
        return
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StoreError):
            Store(tmp_path / "sub" / "c.json")
    finally:
        tmp_path.chmod(0o700)


def _writer(path: Path, out: int) -> None:
    """The killed writer (a forked child: no interpreter to start 50 times): commits
    records and says which, until it is killed."""
    store = Store(path, compact_bytes=5_000)  # kills land in compactions too
    n = len(store.cps())
    while True:
        store.put_cp({"cp_id": f"CP-{n:05d}", "location": "x" * 20, "price_eur_kwh": 0.3})
        store.put_session({"session_id": f"s{n}", "cp_id": f"CP-{n:05d}", "open": False})
        store.commit()
        os.write(out, f"{n}\n".encode())
        n += 1


def test_kill_at_random_moments_never_loses_a_committed_record(tmp_path):
    path = tmp_path / "central.json"
    rng = random.Random(7)
    committed = -1
    for _ in range(20):  # kills
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns: it is killed (or dies trying)
            try:
                os.close(read_end)
                _writer(path, write_end)
            finally:
                os._exit(1)
        os.close(write_end)
        with os.fdopen(read_end) as lines:
            first = lines.readline()  # it is writing
            assert first.strip().isdigit()
            time.sleep(rng.uniform(0, 0.05))  # a random moment inside the write loop
            os.kill(pid, signal.SIGKILL)
            out = first + lines.read()
        os.waitpid(pid, 0)
        printed = [int(x) for x in out.split()]
        committed = max(committed, max(printed))
        json.loads(path.read_text())  # always a whole, valid file
        data = read_database(path)  # with the journal of what was committed since
        ids = set(data["cps"])
        missing = [n for n in range(committed + 1) if f"CP-{n:05d}" not in ids]
        assert not missing, f"committed records lost: {missing[:5]}"
        assert len(data["sessions"]) >= committed + 1
    Store(path).close()  # opening cleans the temp files of killed writers and journals
    assert [p.name for p in tmp_path.iterdir()] == ["central.json"]
    assert set(read_database(path)["cps"]) == ids


def test_old_closed_sessions_move_to_the_archive(tmp_path):
    store = Store(tmp_path / "central.json", keep_closed=3)
    for i in range(5):
        store.put_session({"session_id": f"s{i}", "status": "closed", "ended_at": float(i)})
    store.put_session({"session_id": "open", "status": "open"})
    store.commit()
    assert sorted(r["session_id"] for r in store.sessions()) == ["open", "s2", "s3", "s4"]
    assert [r["session_id"] for r in store.archived_sessions()] == ["s0", "s1"]
    store.close()
    again = Store(tmp_path / "central.json", keep_closed=3)
    assert len(again.sessions()) == 4 and len(again.archived_sessions()) == 2


def test_a_commit_appends_only_what_changed_and_compaction_keeps_a_tinydb_file(tmp_path):
    path = tmp_path / "central.json"
    store = Store(path, compact_bytes=10**9)
    for i in range(200):
        store.put_cp({"cp_id": f"CP-{i:03d}", "location": "x" * 100})
    store.commit()
    journal = tmp_path / "central.json.journal.1"
    size = journal.stat().st_size
    store.put_session({"session_id": "s1", "kwh": 1.0})
    store.remove_cp("CP-007")
    store.commit()
    assert journal.stat().st_size - size < 200  # one small line, not the database
    assert "CP-007" not in read_database(path)["cps"]
    store.compact_bytes = 1  # the next commit compacts (in a thread)
    store.put_session({"session_id": "s1", "kwh": 2.0})
    store.commit()
    store.close()
    from tinydb import TinyDB

    with TinyDB(path) as db:
        assert len(db.table("cps")) == 199
        assert db.table("sessions").all() == [{"session_id": "s1", "kwh": 2.0}]
    assert not list(tmp_path.glob("*.journal.*"))


def test_a_torn_last_line_is_a_batch_never_committed(tmp_path):
    path = tmp_path / "central.json"
    store = Store(path)
    store.put_cp({"cp_id": "CP-01"})
    store.commit()
    journal = next(tmp_path.glob("*.journal.*"))
    with open(journal, "ab") as out:  # a kill in the middle of the next append
        out.write(b'{"put":{"cps":{"CP-02":{"cp_id":"CP-0')
    os.close(store._journal_fd)  # the killed process' descriptor
    store._journal_fd = None
    store._release()
    again = Store(path)
    assert [r["cp_id"] for r in again.cps()] == ["CP-01"]
    again.close()


def test_replaying_a_journal_the_file_already_holds_changes_nothing(tmp_path):
    path = tmp_path / "central.json"
    store = Store(path)
    store.put_session({"session_id": "s1", "kwh": 1.0})
    store.commit()
    store.put_session({"session_id": "s1", "kwh": 2.0})
    store.remove_cp("none")
    store.put_cp({"cp_id": "CP-01"})
    store.commit()
    store.remove_cp("CP-01")
    store.commit()
    journal = next(tmp_path.glob("*.journal.*"))
    kept = journal.read_bytes()
    store.close()  # compacts and drops the journal ...
    journal.write_bytes(kept)  # ... unless killed between the two
    again = Store(path)
    assert again.sessions() == [{"session_id": "s1", "kwh": 2.0}] and again.cps() == []
    again.close()


def test_the_audit_ring_keeps_the_last_events_as_records(tmp_path):
    from evc.store import AUDIT, AuditRing
    from evc.store.audit import RING

    class Log:
        lines: list = []

        def write(self, event, **fields):
            self.lines.append(event)

    store = Store(tmp_path / "c.json")
    ring = AuditRing(Log(), store)
    for i in range(RING + 3):
        ring.write("operator", line=f"stop CP-{i}", where=tmp_path)
    store.commit()
    records = store.all(AUDIT)
    assert len(records) == RING and len(Log.lines) == RING + 3
    newest = max(records, key=lambda r: r["seq"])
    assert newest["seq"] == RING + 3 and newest["line"] == f"stop CP-{RING + 2}"
    assert isinstance(newest["where"], str)
    assert AuditRing(Log(), store).seq == RING + 3  # a restart goes on numbering

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from evc.errors import StoreError
from evc.store import Store


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
    assert not path.exists() or "CP-01" not in path.read_text()
    store.commit()
    assert "CP-01" in path.read_text()


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


WRITER = r"""
import sys
from evc.store import Store
store = Store(sys.argv[1])
n = len(store.cps())
while True:
    store.put_cp({"cp_id": f"CP-{n:05d}", "location": "x" * 200, "price_eur_kwh": 0.3})
    store.put_session({"session_id": f"s{n}", "cp_id": f"CP-{n:05d}", "open": False})
    store.commit()
    print(n, flush=True)
    n += 1
"""


def test_kill_at_random_moments_never_loses_a_committed_record(tmp_path):
    path = tmp_path / "central.json"
    rng = random.Random(7)
    committed = -1
    for _ in range(50):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # it is writing
        assert first.strip().isdigit()
        time.sleep(rng.uniform(0, 0.05))  # a random moment inside the write loop
        proc.send_signal(signal.SIGKILL)
        out = first + proc.stdout.read()
        proc.wait()
        printed = [int(x) for x in out.split()]
        committed = max(committed, max(printed))
        data = json.loads(path.read_text())  # always a whole, valid file
        ids = {r["cp_id"] for r in data["cps"].values()}
        missing = [n for n in range(committed + 1) if f"CP-{n:05d}" not in ids]
        assert not missing, f"committed records lost: {missing[:5]}"
        assert len(data["sessions"]) >= committed + 1
    Store(path).close()  # opening cleans the temp files of killed writers
    assert [p.name for p in tmp_path.iterdir()] == ["central.json"]


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

"""The driver's sequence without Kafka: a fake bus, a queue as inbox, a dict as journal."""

from __future__ import annotations

import json
import queue
import threading
import time

import pytest

from evc.driver.driver import (
    Driver,
    Got,
    available_lines,
    claim_journal,
    file_identity,
    numbered_requests,
)
from evc.errors import BusError, ConfigError
from evc.netview import NetworkView
from evc.protocol import messages as m
from evc.store import JsonFile


class Journal:
    def __init__(self, data: dict | None = None) -> None:
        self.data = data or {}

    def load(self) -> dict:
        return dict(self.data)

    def save(self, data: dict) -> None:
        self.data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}


class Central:
    """A fake bus that plays central: it answers each request at once, as told."""

    def __init__(self, inbox: queue.Queue, answer: str = "authorize") -> None:
        self.inbox = inbox
        self.answer = answer
        self.sent: list[m.Message] = []
        self.fail = 0
        self.refuse = False
        self.offset = 0

    def put(self, msg: m.Message) -> None:
        self.offset += 1
        self.inbox.put(Got(msg, "control_topic", 1, self.offset))

    def beat(self) -> None:
        self.inbox.put(Got(m.CentralStatus(central="c", started_at=0.0)))

    def send(self, topic, message, key, on_done=None) -> None:
        if self.fail:
            self.fail -= 1
            raise BusError("broker away", retriable=True)
        if self.refuse:  # the broker takes nothing from this driver, ever (an ACL)
            self.sent.append(message)
            on_done(BusError("TopicAuthorizationFailedError", retriable=False))
            return
        self.sent.append(message)
        if on_done is not None:
            on_done(None)
        self.beat()
        if isinstance(message, m.ChargeRequest) and self.answer:
            if self.answer == "authorize":
                self.put(m.Authorization(driver_id=message.driver_id, cp_id=message.cp_id,
                                         request_id=message.msg_id, authorized=True,
                                         session_id=f"s-{message.msg_id}", price_eur_kwh=0.3))
            else:
                self.put(m.Authorization(driver_id=message.driver_id, cp_id=message.cp_id,
                                         request_id=message.msg_id, authorized=False,
                                         code=m.DenyCode.BUSY, reason="busy"))
        elif isinstance(message, m.EndRequest):
            self.put(m.Telemetry(cp_id=message.cp_id, driver_id=message.driver_id,
                                 consumo_kwh=1.5, importe_eur=0.45,
                                 session_id=message.session_id))
            self.put(m.Ticket(driver_id=message.driver_id, cp_id=message.cp_id,
                              session_id=message.session_id, consumo_kwh=1.5, importe_eur=0.45,
                              price_eur_kwh=0.3, started_at=1.0, ended_at=2.0,
                              reason=m.EndReason.FINISHED))


def make(journal=None, answer="authorize", **kw):
    inbox: queue.Queue = queue.Queue()
    central = Central(inbox, answer)
    central.beat()
    settings = {"timeout": 2.0, "charge_seconds": 0.0, "pause": 0.0, "live": True,
                "central_timeout": 3.0, **kw}
    d = Driver(central.send, "D-1", inbox, threading.Event(), journal=journal or Journal(),
               **settings)
    return d, central


def requests_file(tmp_path, *cps: str):
    path = tmp_path / "r.txt"
    path.write_text("# mine\n" + "".join(f"{cp}\n" for cp in cps) + "bad id here\n")
    return path


def test_a_file_is_served_line_by_line(tmp_path, capsys):
    d, central = make()
    d.run_file(requests_file(tmp_path, "CP-01", "CP-02"))
    out = capsys.readouterr().out
    assert out.count("TICKET at") == 2 and "is not a CP id; skipped" in out
    assert [type(x).__name__ for x in central.sent] == [
        "ChargeRequest", "EndRequest", "ChargeRequest", "EndRequest"]
    assert d.summary == {"requested": 2, "authorized": 2, "denied": 0, "unanswered": 0,
                         "tickets": 2}
    assert d.state["file"] is None and d.state["next"] == 0  # done: a new run starts over


def test_a_denial_moves_on(tmp_path, capsys):
    d, _ = make(answer="deny")
    d.run_file(requests_file(tmp_path, "CP-01"))
    assert "DENIED at CP-01: busy" in capsys.readouterr().out and d.summary["denied"] == 1


def test_no_answer_from_a_live_central_times_out(tmp_path, capsys):
    d, central = make(answer="", timeout=0.3)
    d.run_file(requests_file(tmp_path, "CP-01"))
    assert "central did not answer within 0.3 s" in capsys.readouterr().out


def test_the_timeout_does_not_count_while_central_is_away(tmp_path, capsys):
    d, central = make(answer="", timeout=0.3, central_timeout=0.2)
    central.beat = lambda: None  # central's heartbeat stops
    stop_after = threading.Timer(1.0, d.stop.set)  # three timeouts without an answer
    stop_after.start()
    d.run_file(requests_file(tmp_path, "CP-01"))
    stop_after.join()
    out = capsys.readouterr().out
    assert "central unavailable since" in out and "did not answer" not in out
    assert d.state["current"]["request"]["cp_id_solicitado"] == "CP-01"  # kept for a restart


def test_a_send_kafka_refuses_is_sent_again(tmp_path, capsys):
    d, central = make()
    central.fail = 1
    d.run_file(requests_file(tmp_path, "CP-01"))
    requests = [x for x in central.sent if isinstance(x, m.ChargeRequest)]
    assert len(requests) == 1 and "sending it again" in capsys.readouterr().out


def test_a_send_kafka_refuses_for_good_is_said_once_and_not_sent_again(tmp_path, capsys):
    d, central = make(timeout=0.2)
    central.refuse = True
    d.run_file(requests_file(tmp_path, "CP-01"))
    out = capsys.readouterr().out
    assert len(central.sent) == 1  # not retried
    assert out.count("for good") == 1 and "TopicAuthorizationFailedError" in out
    assert "sending it again" not in out and d.summary["unanswered"] == 1

def test_a_restart_resumes_the_supply_in_flight_and_the_file_after_it(tmp_path, capsys):
    path = requests_file(tmp_path, "CP-01", "CP-02")
    auth = m.Authorization(driver_id="D-1", cp_id="CP-01", request_id="r1", authorized=True,
                           session_id="s1", price_eur_kwh=0.3)
    request = m.ChargeRequest(driver_id="D-1", cp_id="CP-01", msg_id="r1")
    journal = Journal({"driver_id": "D-1", "file": file_identity(path), "next": 0,
                       "current": {"request": request.to_wire(), "line": 0,
                                   "answer": auth.to_wire(), "authorized_at": time.time(),
                                   "end_sent": time.time()}})
    d, central = make(journal)
    d.run_file(path)
    out = capsys.readouterr().out
    assert "following my request at CP-01" in out
    sent = [(type(x).__name__, getattr(x, "cp_id", None)) for x in central.sent]
    # the end again (it may have died in the buffer), its ticket, then only CP-02
    assert sent == [("EndRequest", "CP-01"), ("ChargeRequest", "CP-02"),
                    ("EndRequest", "CP-02")]
    assert out.count("TICKET at") == 2


def test_a_restart_sends_an_unanswered_request_again_with_its_own_id(tmp_path):
    path = requests_file(tmp_path, "CP-01")
    request = m.ChargeRequest(driver_id="D-1", cp_id="CP-01")
    journal = Journal({"driver_id": "D-1", "file": file_identity(path), "next": 0,
                       "current": {"request": request.to_wire(), "line": 0}})
    d, central = make(journal)
    d.run_file(path)
    assert central.sent[0].msg_id == request.msg_id  # central answers it once
    assert len([x for x in central.sent if isinstance(x, m.ChargeRequest)]) == 1


def test_another_file_starts_from_its_first_line(tmp_path, capsys):
    old = tmp_path / "old.txt"
    old.write_text("CP-09\n")
    journal = Journal({"driver_id": "D-1", "file": file_identity(old), "next": 1})
    d, central = make(journal)
    d.run_file(requests_file(tmp_path, "CP-01"))
    assert "is not the file of the last run" in capsys.readouterr().out
    assert central.sent[0].cp_id == "CP-01"


def test_a_journal_of_another_driver_is_refused():
    with pytest.raises(ConfigError, match="belongs to driver D-9"):
        make(Journal({"driver_id": "D-9"}))


def test_an_unreadable_journal_request_is_dropped(tmp_path, capsys):
    d, central = make(Journal({"driver_id": "D-1", "current": {"request": {"type": "x"}}}))
    d.resume()
    assert "unreadable" in capsys.readouterr().out and d.state["current"] is None


def test_the_prompt_lists_and_requests(capsys):
    d, central = make()
    d.network.apply(m.CPStatus(cp_id="CP-01", location="Calle 1", price_eur_kwh=0.3,
                               state=m.CPState.ACTIVADO))
    d.network.apply(m.CPStatus(cp_id="CP-02", location="Calle 2", price_eur_kwh=0.3,
                               state=m.CPState.AVERIADO, detail="engine KO"))
    d.caught_up.set()
    lines: queue.Queue = queue.Queue()
    for line in ("list\n", "CP 1\n", "CP-02\n", "\n"):
        lines.put(line)
    d.run_prompt(lines)
    out = capsys.readouterr().out
    assert "1 of 2 charge points available" in out and "CP-01" in out
    assert "is not a CP id" in out
    assert "CP-02 is out of service (fault) right now; asking central anyway" in out


def test_available_lines_say_when_central_is_away():
    view = NetworkView()
    assert available_lines(view)[0].startswith("central unavailable")
    view.apply(m.CentralStatus(central="c", started_at=0.0), live=True)
    assert available_lines(view) == ["central is available", "0 of 0 charge points available"]


def test_request_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        numbered_requests(tmp_path / "nope.txt")
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        numbered_requests(bad)
    assert numbered_requests(requests_file(tmp_path, "CP-01")) == [(2, "CP-01")]


def test_with_a_credential_unsigned_answers_are_forgeries(tmp_path, capsys):
    from evc.store.credentials import Credential

    key_file = tmp_path / "D-1.key"
    key_file.write_text("ab" * 32 + "\n")
    inbox: queue.Queue = queue.Queue()
    central = Central(inbox)  # answers unsigned: as a stranger would
    central.beat()
    d = Driver(central.send, "D-1", inbox, threading.Event(), journal=Journal(), timeout=0.5,
               charge_seconds=0, pause=0, live=False,
               credential=Credential("D-1", key_file))
    d.run_file(requests_file(tmp_path, "CP-01"))
    out = capsys.readouterr().out
    assert "ignored a forged authorization" in out and "did not answer" in out
    assert central.sent[0].mac  # its own request went signed


def test_the_pause_reads_central_s_heartbeats(tmp_path, capsys):
    """Central beats all through the pause between two requests: the driver, reading
    meanwhile, never says central is unavailable (a sleeping one did, for an instant)."""
    d, central = make(pause=0.9, central_timeout=0.3)
    beating = threading.Event()

    def beat() -> None:  # the network's word, then central's heartbeat, over and over
        while not beating.wait(0.1):
            central.inbox.put(Got(m.CPStatus(cp_id="CP-09", location="Elda",
                                             price_eur_kwh=0.3, state=m.CPState.ACTIVADO)))
            central.beat()

    pulse = threading.Thread(target=beat)
    pulse.start()
    try:
        d.run_file(requests_file(tmp_path, "CP-01", "CP-02"))
    finally:
        beating.set()
        pulse.join()
    out = capsys.readouterr().out
    assert out.count("TICKET at") == 2
    assert "central unavailable" not in out, out


def test_a_journal_of_another_network_is_set_aside_at_once(tmp_path, capsys):
    """A driver killed mid-supply and started days later on a fresh broker: its request
    in flight is not this network's. Said in one line, kept beside, never followed."""
    journal = JsonFile(tmp_path / "driver-D-1.json")
    request = m.ChargeRequest(driver_id="D-1", cp_id="CP-01")
    journal.save({"driver_id": "D-1", "network": "old-cluster/demo-", "next": 3,
                  "current": {"request": request.to_wire(), "line": 3}})
    assert claim_journal(journal, "new-cluster/demo-", "D-1") == {}
    out = capsys.readouterr().out
    assert "from another network" in out and "'old-cluster/demo-'" in out
    (aside,) = tmp_path.glob("driver-D-1.json.other-network-*")
    assert json.loads(aside.read_text())["current"]["line"] == 3  # kept, not lost
    assert journal.load() == {}
    # the same network's journal is this driver's to follow, and a driver records its own
    journal.save({"driver_id": "D-1", "network": "new-cluster/demo-", "next": 1})
    assert claim_journal(journal, "new-cluster/demo-", "D-1")["next"] == 1
    d, _ = make(Journal({"driver_id": "D-1"}), network="new-cluster/demo-")
    assert d.state["network"] == "new-cluster/demo-"

"""The monitor's state machine against a fake central and a fake engine on 127.0.0.1."""

from __future__ import annotations

import queue
import socket
import threading

import pytest

from evc.cp_monitor.monitor import Monitor, check_engine
from evc.net import Address
from evc.protocol import messages as m
from evc.protocol.framing import read_frames, send_frame
from tests.helpers import wait_for


class FakeServer:
    """Listens on 127.0.0.1; each connection is served by ``talk`` in a thread of its own."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = Address("127.0.0.1", self.listener.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.conns.append(sock)
            threading.Thread(target=self.talk, args=(sock,), daemon=True).start()

    def talk(self, sock: socket.socket) -> None:
        raise NotImplementedError


class FakeEngine(FakeServer):
    """Answers health checks OK, KO, or not at all."""

    def __init__(self) -> None:
        self.mode = "OK"
        super().__init__()

    def talk(self, sock: socket.socket) -> None:
        try:
            for obj in read_frames(sock, self.stop):
                if self.mode != "HANG":
                    send_frame(sock, m.HealthReply(cp_id=obj["cp_id"],
                                                   status=m.Health(self.mode)).to_wire())
        except OSError:
            pass


class FakeCentral(FakeServer):
    """Accepts monitors; answers as told; records every frame."""

    def __init__(self, reply: str = "ok") -> None:
        self.reply = reply  # ok | unknown | silent | hold | standby
        self.frames: list[dict] = []
        self.release = threading.Event()
        super().__init__()

    def talk(self, sock: socket.socket) -> None:
        try:
            for obj in read_frames(sock, self.stop):
                self.frames.append(obj)
                if self.reply == "silent":
                    continue
                if obj["type"] == "register":
                    if self.reply == "hold":  # answers once released (a busy central)
                        self.release.wait(5)
                    if self.reply in ("unknown", "standby"):
                        send_frame(sock, m.RegisterRejected(
                            cp_id=obj["cp_id"], reason="not in the registry",
                            code=m.RejectCode(self.reply)).to_wire())
                        sock.close()
                    else:
                        send_frame(sock, m.RegisterAccepted(
                            cp_id=obj["cp_id"], location="x", price_eur_kwh=0.3).to_wire())
                elif obj["type"] == "heartbeat":
                    send_frame(sock, m.HeartbeatAck(cp_id=obj["cp_id"]).to_wire())
        except OSError:
            pass

    def kinds(self) -> list[str]:
        return [f["type"] for f in self.frames]

    def drop_everyone(self) -> None:
        for sock in self.conns:
            sock.close()


class Running:
    def __init__(self, central: FakeCentral | list[FakeCentral], engine: FakeEngine,
                 central_timeout: float = 3.0) -> None:
        self.stop = threading.Event()
        events: queue.Queue = queue.Queue()
        self.checker = threading.Thread(target=check_engine, args=(
            engine.address, "CP-01", events, self.stop, 0.1, 0.3))
        address = ([c.address for c in central] if isinstance(central, list)
                   else central.address)
        self.monitor = Monitor(address, "CP-01", "Calle 1", events, self.stop,
                               0.1, central_timeout)
        self.thread = threading.Thread(target=self.monitor.run)
        self.checker.start()
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(3)
        self.checker.join(3)
        self.monitor.close()
        assert not self.thread.is_alive() and not self.checker.is_alive()


@pytest.fixture
def engine():
    e = FakeEngine()
    yield e
    e.stop.set()


def test_registers_beats_and_reports_faults_and_recovery(engine):
    central = FakeCentral()
    run = Running(central, engine)
    try:
        wait_for(lambda: central.kinds()[:1] == ["register"], 5, "registration")
        assert central.frames[0]["health"] == "OK" and central.frames[0]["location"] == "Calle 1"
        wait_for(lambda: central.kinds().count("heartbeat") >= 3, 5, "heartbeats")
        engine.mode = "KO"
        wait_for(lambda: "fault" in central.kinds(), 5, "AVERÍA")
        fault = next(f for f in central.frames if f["type"] == "fault")
        assert "KO" in fault["reason"]
        engine.mode = "OK"
        wait_for(lambda: "recovered" in central.kinds(), 5, "OK again")
        engine.mode = "HANG"
        wait_for(lambda: central.kinds().count("fault") == 2, 5, "a silent engine")
        assert "did not answer" in [f for f in central.frames if f["type"] == "fault"][-1][
            "reason"]
    finally:
        run.close()
        central.stop.set()


def test_an_unknown_cp_ends_the_monitor_with_exit_code_1(engine, capsys):
    central = FakeCentral(reply="unknown")
    run = Running(central, engine)
    wait_for(lambda: run.stop.is_set(), 5, "the monitor to give up")
    run.close()
    central.stop.set()
    assert run.monitor.exit_code == 1
    assert "central refused the registration: not in the registry" in capsys.readouterr().out


def test_a_lost_central_is_reconnected_and_registered_again(engine, capsys):
    central = FakeCentral()
    run = Running(central, engine)
    try:
        wait_for(lambda: run.monitor.registered, 5, "registered")
        central.drop_everyone()
        wait_for(lambda: central.kinds().count("register") == 2, 5, "registered again")
        assert "central unavailable since" in capsys.readouterr().out
    finally:
        run.close()
        central.stop.set()


def test_a_silent_central_is_left_and_tried_again(engine, capsys):
    central = FakeCentral(reply="silent")
    run = Running(central, engine, central_timeout=0.5)
    try:
        wait_for(lambda: central.kinds().count("register") >= 2, 5, "a second try")
        assert "central silent for 0.5 s" in capsys.readouterr().out
    finally:
        run.close()
        central.stop.set()


def test_an_engine_that_is_not_there_is_a_fault_at_registration():
    central = FakeCentral()
    nowhere = socket.create_server(("127.0.0.1", 0))
    address = Address("127.0.0.1", nowhere.getsockname()[1])
    nowhere.close()  # nobody listens there now

    class Missing:
        pass

    missing = Missing()
    missing.address = address  # type: ignore[attr-defined]
    run = Running(central, missing)  # type: ignore[arg-type]
    try:
        wait_for(lambda: central.kinds()[:1] == ["register"], 5, "registration")
        assert central.frames[0]["health"] == "KO"
    finally:
        run.close()
        central.stop.set()


def test_a_health_change_while_central_answers_the_registration_is_reported(engine):
    """Registered as KO, the engine came back before central answered: central must hear
    it, or the CP stays Averiado on the board while it is fine."""
    central = FakeCentral(reply="hold")
    engine.mode = "KO"
    run = Running(central, engine)
    try:
        wait_for(lambda: central.kinds()[:1] == ["register"], 5, "registration")
        assert central.frames[0]["health"] == "KO"
        engine.mode = "OK"
        wait_for(lambda: run.monitor.health is not None and run.monitor.health.ok, 5,
                 "the engine OK again")
        central.release.set()
        wait_for(lambda: "recovered" in central.kinds(), 5, "OK sent after the answer")
    finally:
        run.close()
        central.stop.set()


def test_a_standby_central_sends_the_monitor_to_the_next_address_at_once(engine, capsys):
    standby, active = FakeCentral("standby"), FakeCentral()
    run = Running([standby, active], engine)
    try:
        wait_for(lambda: "heartbeat" in active.kinds(), 5, "registered with the second")
        assert standby.kinds() == ["register"]
        out = capsys.readouterr().out
        assert "is the standby central" in out and f"trying {active.address}" in out
        # the active one dies and the other becomes active: the monitor moves back
        standby.reply = "ok"
        active.reply = "standby"
        active.drop_everyone()
        wait_for(lambda: "heartbeat" in standby.kinds(), 5, "registered with the first")
    finally:
        run.close()
        standby.stop.set()
        active.stop.set()

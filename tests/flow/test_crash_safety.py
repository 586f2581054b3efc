"""Every component can die (kill -9) and nothing is lost (R8, issue: crash safety).

Real processes, the real broker. Each test kills one part mid-supply, restarts it,
and checks what every user sees: the driver's screen, central, and the tickets.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from evc.bus import KafkaBus
from evc.protocol import messages as m
from tests.helpers import Proc, free_port, run_evc, wait_for
from tests.network import Network, Observer

LIVE = re.compile(r"live at (\S+): (\d+\.\d\d) kWh")
TICKET = re.compile(r"TICKET at (\S+): (\d+\.\d\d) kWh, (\d+\.\d\d) €")


def driver(net: Network, driver_id: str, lines: list[str], *extra: str) -> Proc:
    return net.start_driver(driver_id, lines, *extra)


def shown_live(proc: Proc, cp: str) -> float:
    """The most a driver's screen showed as supplied at ``cp``."""
    return max([float(k) for c, k in LIVE.findall(proc.output) if c == cp], default=0.0)


def one_ticket(observer: Observer, session_id: str, timeout: float = 30) -> m.Ticket:
    return observer.wait(m.Ticket, session_id=session_id, timeout=timeout)[0]


def test_engine_killed_mid_supply_bills_what_was_shown_and_comes_back(net, observer):
    net.start_central()
    net.start_cp("CP-01")
    d = driver(net, "D-1", ["CP-01"], "--charge-seconds", "60")
    d.wait_line("live at CP-01: 1.50 kWh", timeout=20)
    auth = observer.of(m.Authorization, driver_id="D-1")[0]
    net.engines["CP-01"].kill()
    shown = shown_live(d, "CP-01")
    net.wait_state("CP-01", "Averiado", timeout=5)
    engine = net.start_engine("CP-01")  # the same port: it finds its journal
    engine.wait_line("reporting its")
    reported = float(re.search(r"reporting its (\d+\.\d\d) kWh", engine.output).group(1))
    ticket = one_ticket(observer, auth.session_id)
    assert ticket.consumo_kwh == reported >= shown > 0
    assert ticket.importe_eur == round(reported * 0.35, 2)
    assert ticket.reason is m.EndReason.FAULT
    d.wait_line(f"TICKET at CP-01: {reported:.2f} kWh")
    net.wait_state("CP-01", "Activado", timeout=10)  # back in service by itself
    assert d.popen.wait(20) == 0
    assert len(observer.of(m.Ticket, session_id=auth.session_id)) == 1


def test_driver_killed_mid_supply_resumes_it_and_goes_on_with_its_file(net, observer):
    net.start_central()
    net.start_cp("CP-01")
    net.start_cp("CP-02")
    d = driver(net, "D-1", ["CP-01", "CP-02"], "--charge-seconds", "5", "--pause", "1")
    d.wait_line("live at CP-01: 1.00 kWh", timeout=20)
    d.kill()
    again = driver(net, "D-1", [], "--charge-seconds", "5", "--pause", "1")
    again.wait_line("following my request at CP-01")
    again.wait_line("live at CP-01")  # the same supply, still running: live figures
    again.wait_line("TICKET at CP-01")
    again.wait_line("requested a charge at CP-02")
    again.wait_line("TICKET at CP-02", timeout=30)
    assert again.popen.wait(20) == 0
    requests = observer.of(m.ChargeRequest, driver_id="D-1")
    assert sorted(r.cp_id for r in requests) == ["CP-01", "CP-02"], (  # no line asked twice
        requests, again.output)
    auths = observer.of(m.Authorization, driver_id="D-1")
    assert len(auths) == 2 and all(a.authorized for a in auths)
    for auth in auths:
        assert len(observer.of(m.Ticket, session_id=auth.session_id)) == 1
    assert "requested a charge at CP-01" not in again.output


def test_driver_away_while_its_supply_ended_sees_the_ticket_on_return(net, observer):
    net.start_central()
    net.start_cp("CP-01")
    d = driver(net, "D-1", ["CP-01"], "--charge-seconds", "60")
    d.wait_line("live at CP-01: 1.00 kWh", timeout=20)
    auth = observer.of(m.Authorization, driver_id="D-1")[0]
    d.kill()
    net.engines["CP-01"].send("u")  # the supply ends while the driver is away
    ticket = one_ticket(observer, auth.session_id)
    again = driver(net, "D-1", [], "--charge-seconds", "60")
    again.wait_line(f"TICKET at CP-01: {ticket.consumo_kwh:.2f} kWh")
    assert again.popen.wait(20) == 0
    assert len(observer.of(m.ChargeRequest, driver_id="D-1")) == 1
    # the file is done: a new run starts it again from its first line
    third = driver(net, "D-1", [], "--charge-seconds", "1")
    third.wait_line("requested a charge at CP-01")
    assert third.popen.wait(30) == 0


@pytest.mark.parametrize("away", [1, 20])
def test_central_killed_mid_supply_resumes_and_bills_the_outage_too(net, observer, away):
    central = net.start_central()
    net.start_cp("CP-01")
    d = driver(net, "D-1", ["CP-01"], "--charge-seconds", "6")
    d.wait_line("live at CP-01: 1.00 kWh", timeout=20)
    auth = observer.of(m.Authorization, driver_id="D-1")[0]
    central.kill()
    d.wait_line("central unavailable since", timeout=10)
    before = len(observer.of(m.Telemetry, session_id=auth.session_id))
    time.sleep(away)  # central is away this long (the charge point goes on supplying)
    again = net.start_central()
    d.wait_line("central is back", timeout=20)
    ticket = one_ticket(observer, auth.session_id, timeout=40)
    final = observer.of(m.Telemetry, session_id=auth.session_id, final=True)
    assert len(final) == 1 and ticket.consumo_kwh == final[0].consumo_kwh
    assert ticket.reason is m.EndReason.FINISHED
    readings = observer.of(m.Telemetry, session_id=auth.session_id)
    assert len(readings) > before  # supplied while central was away, and billed
    assert ticket.consumo_kwh >= max(t.consumo_kwh for t in readings)
    d.wait_line(f"TICKET at CP-01: {ticket.consumo_kwh:.2f} kWh")
    assert d.popen.wait(20) == 0
    assert len(observer.of(m.Ticket, session_id=auth.session_id)) == 1
    assert "central_restart" not in again.output


@pytest.fixture
def own_broker(tmp_path):
    """A broker of this test's own, to stop and start again on the same data."""
    port, data = free_port(), str(tmp_path / "broker")
    args = ["--listen", f"127.0.0.1:{port}", "--controller-port", str(free_port()),
            "--data-dir", data]

    def start() -> None:
        started = run_evc(["broker", "start", *args], timeout=300)
        assert started.returncode == 0, started.stderr

    def stop() -> None:
        assert run_evc(["broker", "stop", "--data-dir", data], timeout=120).returncode == 0

    start()
    try:
        yield f"127.0.0.1:{port}", start, stop
    finally:
        run_evc(["broker", "stop", "--data-dir", data], timeout=120)


@pytest.mark.parametrize("down", [40])  # past a request's 30-s life (and the brief's 15 s)
def test_broker_down_mid_supply_stops_nobody(own_broker, prefix, tmp_path, procs, down):
    kafka, start, stop = own_broker
    net = Network(kafka, prefix, tmp_path, procs)
    net.start_central()
    net.start_cp("CP-01")
    d = driver(net, "D-1", ["CP-01"], "--charge-seconds", "300")
    d.wait_line("live at CP-01: 1.00 kWh", timeout=30)
    t0 = time.monotonic()
    stop()
    d.wait_line("central unavailable since", timeout=15)
    time.sleep(max(0.0, down - (time.monotonic() - t0)))
    start()
    d.wait_line("central is back", timeout=60)
    lives = len(LIVE.findall(d.output))
    try:
        wait_for(lambda: len(LIVE.findall(d.output)) > lives + 2, 30, "live figures again")
    except AssertionError:
        d.signal(signal.SIGUSR1)  # what is it doing?
        try:
            wait_for(lambda: "most recent call first" in d.output, 3, "the stack dump")
        except AssertionError:
            pass  # report what there is
        raise AssertionError(d.output[-6000:]) from None
    net.engines["CP-01"].send("u")  # the driver unplugs
    d.wait_line("TICKET at CP-01", timeout=60)
    assert d.popen.wait(20) == 0
    for proc in (net.central, net.engines["CP-01"], net.monitors["CP-01"]):
        assert proc.popen.poll() is None, f"{proc.name} exited:\n{proc.output[-2000:]}"
    with KafkaBus(kafka, prefix=prefix, client_id="evc-test") as bus:
        observer = Observer(bus)
        try:
            (auth,) = observer.wait(m.Authorization, driver_id="D-1")
            ticket = one_ticket(observer, auth.session_id)
            time.sleep(1)  # a duplicate would be right behind it
            assert len(observer.of(m.Ticket, session_id=auth.session_id)) == 1
            readings = observer.of(m.Telemetry, session_id=auth.session_id)
            assert ticket.consumo_kwh == max(t.consumo_kwh for t in readings)
            shown = float(TICKET.search(d.output).group(2))
            assert shown == ticket.consumo_kwh >= shown_live(d, "CP-01")
        finally:
            observer.close()

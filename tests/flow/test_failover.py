"""Two centrals, one active (issue: no single point of failure).

Real processes, the real broker: the active central killed mid-supply (kill -9) or
frozen, the standby takes over with the state up to date, monitors move to it, each
driver gets exactly one ticket equal to the engine's final figures, and a deposed
central steps down instead of acting beside the new one.
"""

from __future__ import annotations

import signal
import time

from evc.protocol import messages as m
from tests.helpers import Proc, free_port, wait_for
from tests.network import Network, Observer


def second_central(net: Network, name: str = "central B") -> tuple[Proc, int]:
    """Another central on its own database and port, same broker and network."""
    port = free_port()
    proc = Proc(["central", str(port), net.kafka, str(net.tmp / f"{name[-1]}.json"),
                 "--listen-host", "127.0.0.1", "--topic-prefix", net.prefix,
                 "--log-level", "INFO", "--log-file", str(net.tmp / f"{name[-1]}.log")],
                name=name)
    net.procs.append(proc)
    return proc, port


def start_cp(net: Network, cp_id: str, *ports: int) -> Proc:
    net.start_engine(cp_id)
    monitor = Proc(["cp-monitor", f"127.0.0.1:{net.engine_ports[cp_id]}",
                    ",".join(f"127.0.0.1:{p}" for p in ports), cp_id], name=f"monitor {cp_id}")
    net.procs.append(monitor)
    monitor.wait_line("registered with central", timeout=15)
    return monitor


def driver(net: Network, driver_id: str, cp_id: str, seconds: float) -> Proc:
    return net.start_driver(driver_id, [cp_id], "--charge-seconds", str(seconds))


def test_the_standby_takes_over_mid_supply_and_bills_once(net, observer: Observer):
    a = net.start_central()
    b, b_port = second_central(net)
    b.wait_line("standby: following the active central", timeout=40)
    monitor = start_cp(net, "CP-01", net.port, b_port)
    d1 = driver(net, "D-1", "CP-01", 8)
    d1.wait_line("live at CP-01: 1.00 kWh", timeout=20)
    auth = observer.of(m.Authorization, driver_id="D-1")[0]
    assert auth.authorized
    killed = time.monotonic()
    a.kill()
    # a request made while nobody is active is answered once the standby has taken over
    start_cp(net, "CP-02", b_port, net.port)
    d2 = driver(net, "D-2", "CP-02", 1)
    b.wait_line("central ready (active", timeout=15)
    took = time.monotonic() - killed
    assert took < 5.0, f"the standby took {took:.1f} s to become active:\n{b.output}"
    monitor.wait_line(f"registered with central at 127.0.0.1:{b_port}", timeout=10)
    ticket = observer.wait(m.Ticket, session_id=auth.session_id, timeout=30)[0]
    final = observer.wait(m.Telemetry, session_id=auth.session_id, final=True)
    assert len(final) == 1 and ticket.consumo_kwh == final[0].consumo_kwh > 1.0
    assert ticket.reason is m.EndReason.FINISHED
    d1.wait_line(f"TICKET at CP-01: {ticket.consumo_kwh:.2f} kWh")
    d2.wait_line("TICKET at CP-02", timeout=30)
    assert d1.popen.wait(20) == 0 and d2.popen.wait(20) == 0
    # the failover was shorter than the heartbeat timeout: CP-01 was never shown gone
    assert "CP-01 Suministrando -> Desconectado" not in b.output, b.output
    assert not [ln for ln in b.output.splitlines() if "CP-01" in ln and "-> Desconectado" in ln]
    # the old active returns as the standby, and takes over again when B dies
    a2 = Proc(a.args, name="central A again")
    net.procs.append(a2)
    a2.wait_line("standby: following the active central", timeout=40)
    b.kill()
    a2.wait_line("central ready (active", timeout=15)
    monitor.wait_line(f"registered with central at 127.0.0.1:{net.port}", timeout=10, count=2)
    d3 = driver(net, "D-3", "CP-01", 1)
    d3.wait_line("TICKET at CP-01", timeout=30)
    assert d3.popen.wait(20) == 0
    for session in (auth.session_id,):
        assert len(observer.of(m.Ticket, session_id=session)) == 1
    assert len(observer.of(m.Ticket)) == 3  # D-1, D-2, D-3: one each
    # each takeover is a new term
    assert "term 1," in a.output and "term 2," in b.output and "term 3," in a2.output
    assert "Traceback" not in a.output + b.output + a2.output


def test_a_frozen_active_central_is_deposed_and_steps_down(net, observer: Observer):
    a = net.start_central()
    b, b_port = second_central(net)
    b.wait_line("standby: following the active central", timeout=40)
    start_cp(net, "CP-01", net.port, b_port)
    d1 = driver(net, "D-1", "CP-01", 10)
    d1.wait_line("live at CP-01: 1.00 kWh", timeout=20)
    auth = observer.of(m.Authorization, driver_id="D-1")[0]
    a.signal(signal.SIGSTOP)  # frozen: its lease session times out, it does not know
    try:
        b.wait_line("central ready (active", timeout=15)
    finally:
        a.signal(signal.SIGCONT)
    a.wait_line("stepped down: another central took over", timeout=15)
    a.wait_line("standby: following the active central", timeout=10)
    ticket = observer.wait(m.Ticket, session_id=auth.session_id, timeout=40)[0]
    d1.wait_line(f"TICKET at CP-01: {ticket.consumo_kwh:.2f} kWh")
    final = observer.wait(m.Telemetry, session_id=auth.session_id, final=True)
    assert len(final) == 1 and ticket.consumo_kwh == final[0].consumo_kwh
    wait_for(lambda: d1.popen.poll() is not None, 20, "the driver to finish")
    # never two actives: one ticket, and nothing from the deposed term after B's start
    assert len(observer.of(m.Ticket, session_id=auth.session_id)) == 1
    assert "Traceback" not in a.output + b.output


def test_a_standby_sends_monitors_to_the_active_central(net):
    net.start_central()
    b, b_port = second_central(net)
    b.wait_line("standby: following the active central", timeout=40)
    # listed first, the standby refuses at once and names the active one
    monitor = start_cp(net, "CP-01", b_port, net.port)
    assert "is the standby central" in monitor.output
    assert monitor.matching(f"registered with central at 127.0.0.1:{net.port}")
    b.send("stop CP-01")
    b.wait_line("standby (read-only)", timeout=10)
    assert b.stop() == 0

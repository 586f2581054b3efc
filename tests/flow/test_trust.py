"""Strangers cannot impersonate or forge (R9): each attack fails, honest traffic goes on.

Real processes, the real broker, central at its default (authenticated) level. The
attacker knows everything docs/PROTOCOL.md says, but no credential.
"""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest

from evc.protocol import messages as m
from evc.protocol.framing import recv_frame
from evc.protocol.topics import CONTROL, REQUESTS, TELEMETRY
from evc.store import read_audit
from tests.helpers import Proc, wait_for
from tests.network import Network

pytestmark = pytest.mark.central()


def frame(obj: dict) -> bytes:
    payload = json.dumps(obj).encode()
    return struct.pack(">I", len(payload)) + payload


def audit(net: Network) -> list[dict]:
    return read_audit(net.db.with_name("central.audit.jsonl"))


def stranger_registers(net: Network, cp: str, proof: str = "0" * 64) -> dict | None:
    """Register as ``cp`` and answer the challenge with a made-up proof."""
    with socket.create_connection(("127.0.0.1", net.port), timeout=5) as sock:
        sock.sendall(frame({"type": "register", "cp_id": cp, "location": "Fake 1",
                            "health": "OK", "nonce": "ab" * 16}))
        first = recv_frame(sock)
        if first is not None and first["type"] == "challenge":
            sock.sendall(frame({"type": "prove", "cp_id": cp, "proof": proof}))
            return recv_frame(sock)
        return first


def test_a_stranger_cannot_become_a_cp(net):
    net.start_cp("CP-01")
    net.monitors["CP-01"].kill()  # the real monitor drops
    net.wait_state("CP-01", "Desconectado")
    answer = stranger_registers(net, "CP-01")
    assert answer["type"] == "register_rejected" and answer["code"] == "auth"
    # no nonce at all (an open-level monitor, or the documented frame alone)
    with socket.create_connection(("127.0.0.1", net.port), timeout=5) as sock:
        sock.sendall(frame({"type": "register", "cp_id": "CP-01"}))
        assert recv_frame(sock)["code"] == "auth"
    refused = [a for a in audit(net) if a["event"] == "refused" and a["cp_id"] == "CP-01"]
    assert len(refused) >= 2 and all(a["source"].startswith("127.0.0.1:") for a in refused)
    assert net.current_state("CP-01") == "Desconectado"  # the stranger never got in
    net.start_monitor("CP-01")  # and the real one registers as before
    net.wait_state("CP-01", "Activado")


def test_a_forged_reading_bills_nothing(net, bus, observer):
    net.start_cp("CP-01")
    d = Proc(["driver", net.kafka, "D-1", "--topic-prefix", net.prefix,
              "--charge-seconds", "3"], name="driver")
    net.procs.append(d)
    d.send("CP-01")
    d.wait_line("live at CP-01")
    (auth,) = observer.of(m.Authorization, driver_id="D-1")
    forged = m.Telemetry(cp_id="CP-01", driver_id="D-1", consumo_kwh=999.0, importe_eur=5000,
                         session_id=auth.session_id, final=True, reason="finished")
    bus.send(TELEMETRY, forged, "CP-01")
    bus.flush()
    d.wait_line("TICKET at CP-01", timeout=20)
    (ticket,) = observer.wait(m.Ticket, session_id=auth.session_id)
    assert ticket.consumo_kwh < 10 and ticket.importe_eur < 5
    wait_for(lambda: any(a["event"] == "rejected" and a.get("kind") == "telemetry"
                         for a in audit(net)), 5, "the forged reading in the audit log")


def test_a_forged_order_is_refused_by_the_engine_and_the_operator_sees_it(net, bus, observer):
    net.start_cp("CP-01")
    net.engines["CP-01"].wait_line("CP-01 is proven")  # the engine has its monitor's key
    bus.send(CONTROL, m.StartSupply(cp_id="CP-01", driver_id="D-9", session_id="free" * 8,
                                    price_eur_kwh=0.0), "CP-01")
    bus.send(CONTROL, m.StopCP(cp_id="CP-01"), "CP-01")
    bus.flush()
    # within 2 s on central's board (the engine tells its monitor in its next health
    # reply, the monitor tells central)
    net.central.wait_line("CP-01's engine refused an unsigned start_supply order", timeout=2)
    engine = net.engines["CP-01"]
    engine.wait_line("refused an unsigned stop order")
    assert "supplying D-9" not in engine.output and "Parado" not in engine.output
    assert any(a["event"] == "refused" and a.get("code") == "engine" for a in audit(net))
    assert net.current_state("CP-01") == "Activado"
    d = Proc(["driver", net.kafka, "D-1", "--topic-prefix", net.prefix,
              "--charge-seconds", "1"], name="driver")  # real orders still work
    net.procs.append(d)
    d.send("CP-01")
    d.wait_line("TICKET at CP-01", timeout=20)


def test_a_stranger_cannot_request_for_a_driver_nor_forge_its_ticket(net, kafka, bus,
                                                                      observer):
    net.start_cp("CP-01")
    unsigned = m.ChargeRequest(driver_id="D-1", cp_id="CP-01")
    unknown = m.ChargeRequest(driver_id="D-666", cp_id="CP-01")
    for req in (unsigned, unknown):
        bus.send(REQUESTS, req, "CP-01")
    bus.flush()
    assert observer.wait(m.Authorization, request_id=unsigned.msg_id)[0].code \
        is m.DenyCode.BAD_PROOF
    assert observer.wait(m.Authorization, request_id=unknown.msg_id)[0].code \
        is m.DenyCode.UNKNOWN_DRIVER
    d = Proc(["driver", net.kafka, "D-1", "--topic-prefix", net.prefix,
              "--charge-seconds", "4"], name="driver")
    net.procs.append(d)
    d.send("CP-01")
    d.wait_line("live at CP-01")
    (auth,) = [a for a in observer.of(m.Authorization, driver_id="D-1") if a.authorized]
    fake = m.Ticket(driver_id="D-1", cp_id="CP-01", session_id=auth.session_id,
                    consumo_kwh=0.0, importe_eur=9999.0, price_eur_kwh=99, started_at=1,
                    ended_at=2, reason=m.EndReason.FINISHED)
    bus.send(CONTROL, fake, "D-1")
    bus.flush()
    d.wait_line("ignored a forged ticket")
    d.wait_line("TICKET at CP-01", timeout=20)
    assert "9999" not in d.output
    assert net.central.popen.poll() is None


def test_trickling_strangers_are_let_go_and_honest_cps_go_on(net):
    net.start_cp("CP-01")
    socks = [socket.create_connection(("127.0.0.1", net.port), timeout=5) for _ in range(40)]
    deadline = time.monotonic() + 15
    next_byte = 0.0
    try:
        closed: set[int] = set()
        while len(closed) < len(socks) and time.monotonic() < deadline:
            trickle = time.monotonic() >= next_byte
            if trickle:  # one byte a second: never a whole frame
                next_byte = time.monotonic() + 1.0
            for i, sock in enumerate(socks):
                if i in closed:
                    continue
                try:
                    if trickle:
                        sock.send(b"\x00")
                    sock.settimeout(0.01)  # meanwhile, poll for central letting go
                    if sock.recv(100) == b"":
                        closed.add(i)
                except (BlockingIOError, TimeoutError):
                    pass
                except OSError:
                    closed.add(i)
        assert len(closed) == len(socks)  # each let go (by the registration deadline)
    finally:
        for sock in socks:
            sock.close()
    assert net.current_state("CP-01") == "Activado"
    assert len(net.state_lines("CP-01")) == 1


def test_a_stranger_on_the_engine_port_is_refused(net):
    net.start_cp("CP-01")
    net.engines["CP-01"].wait_line("CP-01 is proven")
    port = net.engine_ports["CP-01"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(frame({"type": "health_check", "cp_id": "CP-01"}))  # no proof
        sock.settimeout(5)
        said = b""
        while chunk := sock.recv(4096):  # a KO that says why, then closed
            said += chunk
        assert b'"status":"KO"' in said.replace(b" ", b"") and b"refused" in said
    net.engines["CP-01"].wait_line("refused a health check for CP-01 without its")
    assert net.current_state("CP-01") == "Activado"


def test_rotate_and_revoke_credentials_from_the_console(net):
    net.start_cp("CP-01")
    key = net.tmp / "credentials" / "CP-01.key"
    old = key.read_text()
    net.central.send("rotate CP-01")
    net.central.wait_line("CP-01: credential rotated")
    assert key.read_text() != old
    # the connected monitor is let go; it registers again with the new file by itself
    net.monitors["CP-01"].wait_line("credential was rotated")
    assert net.monitors["CP-01"].popen.wait(10) == 1  # an auth refusal: it stops, says why
    net.start_monitor("CP-01")
    net.wait_state("CP-01", "Activado")
    net.central.send("revoke CP-01")
    net.central.wait_line("CP-01: credential revoked")
    assert not key.exists()
    net.wait_state("CP-01", "Desconectado")
    assert stranger_registers(net, "CP-01")["code"] == "auth"
    events = [(a["event"], a.get("action")) for a in audit(net) if a.get("id") == "CP-01"]
    assert ("credential", "issued") in events and ("credential", "revoked") in events


def test_a_secure_broker_lets_each_role_do_only_its_part(tmp_path, procs):
    """`evc broker start --secure`: SASL/SCRAM users and ACLs. The whole network runs with
    one user per role; a driver's user cannot write orders, a wrong password gets in
    nowhere."""
    from evc.bus import KafkaBus, Sasl
    from evc.errors import BusError
    from tests.helpers import free_port, run_evc

    port, data = free_port(), tmp_path / "broker"
    started = run_evc(["broker", "start", "--secure", "--listen", f"127.0.0.1:{port}",
                       "--controller-port", str(free_port()), "--data-dir", str(data)],
                      timeout=300)
    assert started.returncode == 0, started.stderr
    try:
        assert "--kafka-user driver --kafka-password" in started.stdout
        users = json.loads((data / "kafka-users.json").read_text())
        assert oct((data / "kafka-users.json").stat().st_mode)[-3:] == "600"
        kafka = f"127.0.0.1:{port}"

        def as_role(role: str) -> dict[str, str]:
            return {"EVC_KAFKA_USER": role, "EVC_KAFKA_PASSWORD": users[role]}

        net = Network(kafka, "", tmp_path, procs)
        net.central = Proc(["central", str(net.port), kafka, str(net.db), "--listen-host",
                            "127.0.0.1", "--cps", str(net.cps_file), "--drivers",
                            str(net.drivers_file), "--log-file", str(net.central_log)],
                           env=as_role("central"), name="central")
        procs.append(net.central)
        net.central.wait_line("central ready", timeout=60)
        port_e = net.engine_ports.setdefault("CP-01", free_port())
        engine = Proc(["cp-engine", kafka, "--listen", f"127.0.0.1:{port_e}", "--id", "CP-01",
                       "--state-dir", str(tmp_path / "state")], env=as_role("engine"),
                      name="engine")
        procs.append(engine)
        engine.wait_line("engine listening", timeout=30)
        net.start_monitor("CP-01")
        net.wait_state("CP-01", "Activado")
        d = Proc(["driver", kafka, "D-1", "--charge-seconds", "2"], env=as_role("driver"),
                 name="driver")
        procs.append(d)
        d.send("CP-01")
        d.wait_line("TICKET at CP-01", timeout=30)
        status = run_evc(["status", kafka, "--once"], env=as_role("viewer"))
        assert status.returncode == 0 and "CP-01" in status.stdout, status.stderr
        # evc web as its own user: it reads the network and sends operators' commands
        import urllib.error
        import urllib.request

        web_port = free_port()
        web = Proc(["web", kafka, "--listen", f"127.0.0.1:{web_port}"], env=as_role("web"),
                   name="web")
        procs.append(web)
        web.wait_line("evc web: the board at", timeout=30)
        net.central.send("add-operator ana")
        token = net.central.wait_line("operator ana: password", timeout=10).rsplit(
            "Bearer ", 1)[1].strip()

        def stop_cp01() -> int:
            req = urllib.request.Request(f"http://127.0.0.1:{web_port}/api/cps/CP-01/stop",
                                         method="POST", data=b"{}", headers={
                                             "Authorization": f"Bearer {token}",
                                             "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=15) as res:
                    return res.status
            except urllib.error.HTTPError as exc:
                return exc.code
        assert wait_for(lambda: stop_cp01() == 200, 30, "a command through the web user")
        net.wait_state("CP-01", "Parado", timeout=10)
        net.central.send("resume CP-01")
        net.wait_state("CP-01", "Activado", timeout=10)
        # evc ocpp as its own user: an OCPP charger's supply, and a card at it
        net.gateway_port = free_port()
        gateway = Proc(["ocpp", kafka, f"127.0.0.1:{net.port}", "--listen",
                        f"127.0.0.1:{net.gateway_port}", "--state-dir", str(tmp_path / "gw")],
                       env=as_role("ocpp"), name="gateway")
        procs.append(gateway)
        gateway.wait_line("OCPP 1.6J gateway on", timeout=30)
        charger = net.start_charger("CP-02")
        net.wait_state("CP-02", "Activado")
        charger.send("card D-2")
        charger.wait_line("started at", timeout=15)
        net.wait_state("CP-02", "Suministrando", timeout=15)
        charger.send("unplug")
        net.central.wait_line("ticket to D-2 for CP-02", timeout=20)
        # the driver's user may write requests, never orders
        verdicts: list = []
        with KafkaBus(kafka, sasl=Sasl("driver", users["driver"])) as bus:
            bus.send(CONTROL, m.StopCP(cp_id="CP-01"), "CP-01",
                     lambda error: verdicts.append((error is None, error)))
            wait_for(lambda: verdicts, 20, "the broker's verdict")
        assert verdicts[0][0] is False and "TopicAuthorization" in str(verdicts[0][1])
        assert not verdicts[0][1].retriable  # refused for good: not sent again
        with pytest.raises(BusError, match="refused the login of Kafka user 'driver'"):
            KafkaBus(kafka, sasl=Sasl("driver", "wrong"), connect_timeout=3)
        anonymous = run_evc(["driver", kafka, "D-1", "--list", "--kafka-wait", "2"])
        assert anonymous.returncode == 1  # no user: nothing
        assert net.current_state("CP-01") == "Activado"
    finally:
        run_evc(["broker", "stop", "--data-dir", str(data)], timeout=120)

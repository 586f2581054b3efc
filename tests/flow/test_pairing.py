"""One trust level per CP, on a real broker with real processes: a CP paired with a code
beside another team's bare client at the open level, a supply whose engine never starts,
and a stranger who tries to talk a proven CP down to unsigned orders."""

from __future__ import annotations

import json
import re
import socket
import struct
from datetime import datetime

import pytest
from kafka import KafkaProducer

from evc.protocol import messages as m
from evc.protocol import pairing
from evc.protocol.framing import recv_frame
from evc.protocol.topics import CONTROL, REQUESTS
from evc.store import read_audit
from tests.flow.test_network_view import ForeignMonitor, plain_consumer, records
from tests.helpers import Proc, wait_for
from tests.network import Network


def frame(obj: dict) -> bytes:
    payload = json.dumps(obj).encode()
    return struct.pack(">I", len(payload)) + payload


def code_for(net: Network, ident: str) -> str:
    """The operator types `pair <id>` at central's console and reads the code."""
    assert net.central is not None
    net.central.send(f"pair {ident}")
    line = net.central.wait_line(f"pairing code for CP {ident}:" if ident.startswith("CP")
                                 else f"pairing code for driver {ident}:", timeout=10)
    found = re.search(r": ([0-9A-Z]{4}-[0-9A-Z]{4}) ", line)
    assert found, line
    return found.group(1)


def paired_cp(net: Network, cp: str) -> None:
    net.start_engine(cp)
    monitor = net.start_monitor(cp, "--pair", code_for(net, cp))
    monitor.wait_line(f"{cp}: paired with central")
    net.wait_state(cp, "Activado")
    net.engines[cp].wait_line(f"{cp} is proven")


def registration(net: Network, cp: str) -> str:
    assert net.central is not None
    return [ln for ln in net.central.lines if f" {cp} " in ln and "registered from" in ln][-1]


def clock(line: str) -> float:
    """Seconds of the day of a driver's line (it starts with HH:MM:SS.mmm)."""
    stamp = datetime.strptime(line.split()[0], "%H:%M:%S.%f")
    return stamp.hour * 3600 + stamp.minute * 60 + stamp.second + stamp.microsecond / 1e6


def test_the_open_level_serves_a_proven_cp_and_a_bare_client_side_by_side(kafka, prefix,
                                                                           tmp_path, procs):
    net = Network(kafka, prefix, tmp_path, procs)
    net.start_central("--security", "open")
    assert not (tmp_path / "credentials").exists()  # no key file sprayed at the open level
    paired_cp(net, "CP-01")
    assert registration(net, "CP-01").endswith("(proven))")
    foreign = ForeignMonitor(net.port, "CP-03")
    producer = KafkaProducer(bootstrap_servers=kafka)
    control = plain_consumer(kafka, f"{prefix}control_topic")
    try:
        net.wait_state("CP-03", "Activado")
        assert "(unproven" in registration(net, "CP-03")
        # evc's own driver (no credential: the open level) at the proven CP
        d = net.start_driver("D-1", ["CP-01"], "--charge-seconds", "3")
        ticket = d.wait_line("TICKET at CP-01", timeout=30)
        assert " 0.00 kWh" not in ticket and "ended: finished" in ticket
        # another team's driver and engine, in the seed's bare shapes, at CP-03
        producer.send(f"{prefix}requests_topic", json.dumps(
            {"driver_id": "77", "cp_id_solicitado": "CP-03"}).encode(), key=b"CP-03")
        producer.flush()
        seen: list[dict] = []
        start = wait_for(lambda: next((r for r in records(control, seen)
                                       if r.get("type") == "start_supply"
                                       and r["cp_id"] == "CP-03"), None), 15, "a start order")
        assert "mac" not in start  # an unproven CP's orders go unsigned
        for kwh, final in ((0.5, False), (1.0, True)):
            producer.send(f"{prefix}telemetry_topic", json.dumps(
                {"cp_id": "CP-03", "driver_id": "77", "consumo_kwh": kwh, "importe_eur": 0.0,
                 **({"final": True} if final else {})}).encode(), key=b"CP-03")
        producer.flush()
        bare = wait_for(lambda: next((r for r in records(control, seen)
                                      if r.get("type") == "ticket" and r["cp_id"] == "CP-03"),
                                     None), 15, "the bare client's ticket")
        assert bare["consumo_kwh"] == 1.0
        signed = [r for r in seen if r.get("type") == "start_supply" and r["cp_id"] == "CP-01"]
        assert signed and all(r.get("mac") for r in signed)  # the proven CP's are signed
        engine = net.engines["CP-01"].output
        assert "refused" not in engine and "ignored" not in engine
    finally:
        foreign.close()
        producer.close()
        control.close()


def test_a_supply_whose_engine_never_starts_ends_within_start_timeout(kafka, prefix, tmp_path,
                                                                      procs):
    net = Network(kafka, prefix, tmp_path, procs)
    net.start_central("--security", "open")
    foreign = ForeignMonitor(net.port, "CP-03")  # registers, beats, never supplies
    try:
        net.wait_state("CP-03", "Activado")
        d = net.start_driver("D-1", ["CP-03"], "--charge-seconds", "60")
        authorized = d.wait_line("AUTHORIZED at CP-03", timeout=20)
        ticket = d.wait_line("TICKET at CP-03", timeout=20)
        assert "ended: no_engine (the charge point never started supplying)" in ticket
        assert clock(ticket) - clock(authorized) <= 5.0 + 2.0  # start_timeout + 2 s
        net.central.wait_line("its engine did not start the supply of D-1")
    finally:
        foreign.close()


def test_a_stranger_cannot_talk_a_proven_cp_down(kafka, prefix, tmp_path, procs, bus):
    net = Network(kafka, prefix, tmp_path, procs)
    net.start_central("--security", "open")
    paired_cp(net, "CP-01")
    # the stranger stops the CP's monitor and starts one without the credential
    net.monitors["CP-01"].kill()
    net.wait_state("CP-01", "Desconectado")
    stranger = Proc(["cp-monitor", f"127.0.0.1:{net.engine_ports['CP-01']}",
                     f"127.0.0.1:{net.port}", "CP-01"],
                    env={"EVC_CREDENTIALS_DIR": str(tmp_path / "elsewhere")}, name="stranger")
    procs.append(stranger)
    assert stranger.popen.wait(15) == 1
    assert "pair it" in stranger.output
    net.central.wait_line("refused monitor for CP-01")
    assert "it proved its credential before" in net.central.matching("refused monitor")[-1]
    # and a forged unsigned order is refused by the proven engine, visibly
    net.start_monitor("CP-01")  # the owner's monitor again, with its credential
    net.wait_state("CP-01", "Activado")
    net.monitors["CP-01"].wait_line("registered with central")
    bus.send(CONTROL, m.StartSupply(cp_id="CP-01", driver_id="D-9", session_id="feed" * 8,
                                    price_eur_kwh=0.0), "CP-01")
    bus.flush()
    net.central.wait_line("CP-01's engine refused an unsigned start_supply", timeout=2)
    assert "supplying D-9" not in net.engines["CP-01"].output


@pytest.mark.central()
def test_a_flood_of_bad_pairing_tries_kills_the_code_and_harms_nobody(net, bus):
    """Wrong codes, garbage elements, a replayed confirmation and an unknown id, on
    central's real port and on Kafka, while a CP is registered: each is refused clearly,
    the code dies after its fifth try, and the CP and central go on."""
    net.start_cp("CP-01")
    code = code_for(net, "CP-02")

    def exchange(first: dict, then=None) -> list[dict]:
        with socket.create_connection(("127.0.0.1", net.port), timeout=5) as sock:
            sock.sendall(frame(first))
            said = [recv_frame(sock)]
            if then is not None and said[0] and said[0]["type"] == "pair_challenge":
                sock.sendall(frame(then(said[0])))
                said.append(recv_frame(sock))
            return said

    wrong = pairing.PakeSide("0000-0000", "CP-02", central=False)
    said = exchange({"type": "pair", "cp_id": "CP-02", "pake": wrong.outbound},
                    lambda ch: {"type": "pair_prove", "cp_id": "CP-02", "confirm": "ab" * 32})
    assert said[-1]["type"] == "pair_rejected" and "4 tries left" in said[-1]["reason"]
    said = exchange({"type": "pair", "cp_id": "CP-02", "pake": "41" * 33})  # garbage
    assert said[0]["type"] == "pair_rejected" and "not a pairing message" in said[0]["reason"]
    said = exchange({"type": "pair", "cp_id": "CP-99", "pake": wrong.outbound})
    assert "not in central's registry" in said[0]["reason"]
    said = exchange({"type": "pair_prove", "cp_id": "CP-02", "confirm": "ab" * 32})  # replay
    assert "no pairing of CP-02 in progress" in said[0]["reason"]
    for _ in range(3):  # tries 3-5, over Kafka as a "driver" would be refused: a CP's code
        said = exchange({"type": "pair", "cp_id": "CP-02", "pake": wrong.outbound},
                        lambda ch: {"type": "pair_prove", "cp_id": "CP-02",
                                    "confirm": "cd" * 32})
    assert "used up" in said[-1]["reason"]
    bus.send(REQUESTS, m.DriverPair(driver_id="CP-02", pake=wrong.outbound), "CP-02")
    bus.flush()
    net.central.wait_line("refused pairing of driver CP-02: CP-02 is a charge point")
    # the right code now finds nothing: it died with its fifth try
    monitor = Proc(["cp-monitor", "127.0.0.1:9", f"127.0.0.1:{net.port}", "CP-02", "--pair",
                    code], env={"EVC_CREDENTIALS_DIR": str(net.tmp / "pc3")}, name="pairing")
    net.procs.append(monitor)
    assert monitor.popen.wait(15) == 1
    assert "no pairing code for CP-02" in monitor.output
    refused = [a for a in read_audit(net.db.with_name("central.audit.jsonl"))
               if a["event"] == "pairing" and a.get("result") == "refused"]
    assert len(refused) >= 7 and all(a.get("source") for a in refused)
    assert net.current_state("CP-01") == "Activado" and net.central.popen.poll() is None

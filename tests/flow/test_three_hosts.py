"""Three machines for real: PC1 (drivers), PC2 (Kafka + central), PC3 (charge points).

The test makes three network namespaces joined by a bridge (in a fourth, "switch"
namespace), gives them addresses of its own, runs a real broker advertised on PC2's
address and every `evc` process inside its host, then pulls PC3's cable.

Each host keeps its credentials in a folder of its own and nothing is copied between
them: the operator types `pair` at central's console, each CP and the driver pair once
with the code (`--pair CODE`), and from then on the seed's plain commands work.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid

import pytest

from tests.helpers import EVC, Proc, wait_for

pytestmark = pytest.mark.netns

SUBNET = "10.77.{}.{}"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=30)


def can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = f"evcprobe{uuid.uuid4().hex[:6]}"
    result = sh("ip", "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create network namespaces here: {result.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    return None


class Hosts:
    """pc1, pc2, pc3 on one /24 behind a bridge in namespace `sw`."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:5]
        self.net = int(tag, 16) % 200 + 20
        self.ns = {name: f"evc{tag}{name}" for name in ("sw", "pc1", "pc2", "pc3")}
        self.ip = {f"pc{i}": SUBNET.format(self.net, i) for i in (1, 2, 3)}
        self.veth = {}
        sw = self.ns["sw"]
        for name in self.ns.values():
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        for i in (1, 2, 3):
            host, port = f"h{tag}{i}", f"s{tag}{i}"
            self.veth[f"pc{i}"] = port
            sh("ip", "link", "add", host, "type", "veth", "peer", "name", port)
            sh("ip", "link", "set", host, "netns", self.ns[f"pc{i}"])
            sh("ip", "link", "set", port, "netns", sw)
            sh("ip", "-n", self.ns[f"pc{i}"], "link", "set", host, "name", "eth0")
            sh("ip", "-n", self.ns[f"pc{i}"], "addr", "add", f"{self.ip[f'pc{i}']}/24",
               "dev", "eth0")
            sh("ip", "-n", self.ns[f"pc{i}"], "link", "set", "eth0", "up")
            sh("ip", "-n", sw, "link", "set", port, "master", "br0")
            sh("ip", "-n", sw, "link", "set", port, "up")

    def wrap(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host]]

    def cable(self, host: str, up: bool) -> None:
        sh("ip", "-n", self.ns["sw"], "link", "set", self.veth[host], "up" if up else "down")

    def remove(self) -> None:
        for name in self.ns.values():
            sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def hosts():
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    made = Hosts()
    yield made
    made.remove()


def test_three_hosts_flows_and_a_pulled_cable(hosts, tmp_path, procs):
    pc2 = hosts.ip["pc2"]
    kafka_port = 29092
    kafka = f"{pc2}:{kafka_port}"
    data = tmp_path / "broker"
    broker = [*hosts.wrap("pc2"), *EVC, "broker"]
    started = subprocess.run(broker + ["start", "--listen", kafka, "--advertise", kafka,
                                       "--controller-port", str(kafka_port + 1),
                                       "--data-dir", str(data), "--timeout", "120"],
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    try:
        run_flows(hosts, kafka, tmp_path, procs)
    finally:
        subprocess.run(broker + ["stop", "--data-dir", str(data)], capture_output=True,
                       timeout=120)


def run_flows(hosts: Hosts, kafka: str, tmp_path, procs: list[Proc]) -> None:
    pc2, pc3 = hosts.ip["pc2"], hosts.ip["pc3"]
    cps = tmp_path / "cps.csv"
    cps.write_text("CP-01,C/Italia 5,0.35\nCP-02,Av. Maisonnave 12,0.40\n")
    # every host its own credentials folder: nothing is shared, nothing copied
    creds = {h: tmp_path / h / "credentials" for h in ("pc1", "pc2", "pc3")}
    env = {h: {"EVC_CREDENTIALS_DIR": str(folder)} for h, folder in creds.items()}
    central = Proc(["central", "5000", kafka, str(tmp_path / "central.json"), "--cps",
                    str(cps)], wrapper=hosts.wrap("pc2"), env=env["pc2"], name="central@pc2")
    procs.append(central)
    central.wait_line("central ready", timeout=60)

    def code_for(ident: str) -> str:
        central.send(f"pair {ident}")
        line = central.wait_line(f"pairing code for {'CP' if 'CP' in ident else 'driver'} "
                                 f"{ident}:", timeout=10)
        return re.search(r": ([0-9A-Z]{4}-[0-9A-Z]{4}) ", line).group(1)

    engines, monitors = {}, {}
    for i, cp in enumerate(("CP-01", "CP-02"), start=1):
        port = 6000 + i
        engines[cp] = Proc(["cp-engine", kafka, "--listen", f"{pc3}:{port}",
                            "--state-dir", str(tmp_path / "pc3")],
                           wrapper=hosts.wrap("pc3"), env=env["pc3"], name=f"engine {cp}@pc3")
        procs.append(engines[cp])
        engines[cp].wait_line("engine listening", timeout=30)
        # the code is typed once: the monitor pairs, stores the credential, registers
        paired = Proc(["cp-monitor", f"{pc3}:{port}", f"{pc2}:5000", cp, "--pair",
                       code_for(cp)], wrapper=hosts.wrap("pc3"), env=env["pc3"],
                      name=f"pairing monitor {cp}@pc3")
        procs.append(paired)
        paired.wait_line(f"{cp}: paired with central", timeout=20)
        paired.wait_line("registered with central", timeout=10)
        assert (creds["pc3"] / f"{cp}.key").stat().st_mode & 0o777 == 0o600
        assert paired.stop() == 0
        # then the seed's own command, with nothing more
        monitors[cp] = Proc(["cp-monitor", f"{pc3}:{port}", f"{pc2}:5000", cp],
                            wrapper=hosts.wrap("pc3"), env=env["pc3"],
                            name=f"monitor {cp}@pc3")
        procs.append(monitors[cp])
    assert not (creds["pc1"]).exists()  # PC1 holds nothing of the CPs'

    def state(cp: str) -> str | None:
        lines = [ln for ln in central.lines if f" {cp} " in ln and " -> " in ln]
        return lines[-1].split(" -> ", 1)[1].split()[0] if lines else None

    def wait_state(cp: str, want: str, timeout: float) -> float:
        t0 = time.monotonic()
        wait_for(lambda: state(cp) == want, timeout,
                 f"{cp} {want} across hosts:\n{central.output[-2000:]}")
        return time.monotonic() - t0

    # F1: registration across hosts
    wait_state("CP-01", "Activado", 20)
    wait_state("CP-02", "Activado", 20)
    assert f"monitor registered from {pc3}" in central.output
    for cp in ("CP-01", "CP-02"):  # the plain monitors proved the paired credential
        assert [ln for ln in central.lines if f" {cp} " in ln and " -> Activado" in ln
                and "registered from" in ln][-1].endswith("(proven))")

    # F2 + F3: a driver on PC1 charges at CP-01 and sees live telemetry
    requests = tmp_path / "req.txt"
    requests.write_text("CP-01\n")
    driver = Proc(["driver", kafka, "D-1", "--file", str(requests), "--charge-seconds", "3",
                   "--pair", code_for("D-1")], wrapper=hosts.wrap("pc1"), env=env["pc1"],
                  name="pairing driver@pc1")
    procs.append(driver)
    driver.wait_line("D-1: paired with central", timeout=20)
    driver.wait_line("AUTHORIZED at CP-01", timeout=20)
    wait_state("CP-01", "Suministrando", 5)
    driver.wait_line("live at CP-01", count=2, timeout=10)
    ticket = driver.wait_line("TICKET at CP-01", timeout=20)
    assert driver.popen.wait(10) == 0
    assert " 0.00 kWh" not in ticket
    assert sorted(p.name for p in creds["pc1"].iterdir()) == ["D-1.key"]
    # the seed's plain driver command now: signed with the paired credential
    again = Proc(["driver", kafka, "D-1", "--file", str(requests), "--charge-seconds", "2"],
                 wrapper=hosts.wrap("pc1"), env=env["pc1"], name="driver@pc1")
    procs.append(again)
    again.wait_line("TICKET at CP-01", timeout=30)
    assert again.popen.wait(10) == 0

    # F4: engine fault -> Averiado, recovery -> Activado
    engines["CP-02"].send("f")
    wait_state("CP-02", "Averiado", 10)
    engines["CP-02"].send("r")
    wait_state("CP-02", "Activado", 5)

    # the cable of PC3 is pulled: no FIN, no RST, only silence
    hosts.cable("pc3", up=False)
    wait_state("CP-01", "Desconectado", 15)
    wait_state("CP-02", "Desconectado", 15)
    assert "silent" in [ln for ln in central.lines if " CP-01 " in ln][-1]
    hosts.cable("pc3", up=True)
    wait_state("CP-01", "Activado", 20)
    wait_state("CP-02", "Activado", 20)

    # F5: a monitor dies -> Desconectado
    monitors["CP-01"].kill()
    assert wait_state("CP-01", "Desconectado", 2) < 1.5
    assert central.popen.poll() is None

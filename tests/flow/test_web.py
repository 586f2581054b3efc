"""`evc web` against a real broker, a real central and real charge points: its JSON API
and event stream over HTTP, its refusals of hostile requests, and its board in a real
browser (Chromium): colours, live changes without a reload, a supply's kWh rising, and
an attacker's location shown as text."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.browser import chromium, row_states
from tests.helpers import Proc, free_port, wait_for
from tests.network import Network

XSS = "<img src=x onerror=window.__pwned=1>"


class Web:
    def __init__(self, net: Network, procs: list[Proc]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc(["web", net.kafka, "--listen", f"127.0.0.1:{self.port}",
                          "--topic-prefix", net.prefix, "--log-level", "INFO"], name="web")
        procs.append(self.proc)
        self.proc.wait_line("evc web: the board at", timeout=30)

    def get(self, path: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                return res.status, dict(res.headers), res.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str) -> dict:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def states(self) -> dict[str, str]:
        return {c["cp_id"]: c["state"] for c in self.json("/api/cps")["cps"]}


@pytest.fixture
def network(net: Network, procs: list[Proc]) -> tuple[Network, Web]:
    net.cps_file.write_text("id,location,price_eur_kwh\nCP-01,C/Italia 5,0.35\n"
                            f"CP-02,{XSS},0.40\n")
    net.start_central("--security", "open")
    for cp in ("CP-01", "CP-02"):
        net.start_cp(cp)
    web = Web(net, procs)
    wait_for(lambda: web.states() == {"CP-01": "Activado", "CP-02": "Activado"}, 20,
             lambda: f"both CPs Activado on the web, got {web.states()}")
    wait_for(lambda: web.json("/api/central")["available"], 10, "central live on the web")
    return net, web


def test_the_api_answers_json_and_refuses_what_it_does_not_serve(network):
    net, web = network
    board = web.json("/api/board")
    assert board["central"]["available"] is True and board["operator"] is False
    assert board["counts"]["Activado"] == 2
    cp = web.json("/api/cps/CP-02")
    assert cp["location"] == XSS and cp["price_eur_kwh"] == 0.4 and cp["free"] is True
    assert web.json("/api/central")["available"] is True
    spec = web.json("/api/openapi.json")
    assert spec["openapi"].startswith("3.") and "/api/cps/{cp_id}" in spec["paths"]
    status, headers, body = web.get("/")
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    for path, method, want in (("/api/cps/CP-99", "GET", 404), ("/nope", "GET", 404),
                               ("/api/cps", "POST", 405), ("/api/cps", "DELETE", 405),
                               ("/../../etc/passwd", "GET", 404)):
        status, headers, body = web.get(path, method, body=b"" if method == "POST" else None)
        assert status == want, (path, method, status, body[:200])
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body)["error"]["status"] == want
    status, _, body = web.get("/api/cps", "POST", body=b"x" * (17 << 10))
    assert status == 413 and "at most" in json.loads(body)["error"]["message"]


def raw(web: Web, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_garbage_and_silent_connections_harm_no_one(network):
    net, web = network
    silent = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(20)]
    assert raw(web, b"\x00\xff garbage \r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(web, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n").split(b" ")[1] in (
        b"414", b"400")
    answer = raw(web, b"GET /api/cps HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431") or answer.startswith(b"HTTP/1.1 200")
    assert b"Traceback" not in answer
    assert web.states() == {"CP-01": "Activado", "CP-02": "Activado"}
    for s in silent:
        s.close()
    assert web.proc.popen.poll() is None


def events(web: Web, until, timeout: float = 15.0) -> dict:
    """Read the event stream until a board event satisfies ``until``."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", web.port), timeout=timeout) as s:
        s.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        buf = b""
        while time.monotonic() < deadline:
            buf += s.recv(65536)
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        doc = json.loads(line[6:])
                        if until(doc):
                            return doc
    raise AssertionError("no such board event in time")


def test_the_event_stream_follows_the_network(network):
    net, web = network
    events(web, lambda d: len(d["cps"]) == 2)
    net.monitors["CP-01"].kill()
    doc = events(web, lambda d: any(c["cp_id"] == "CP-01" and c["state"] == "Desconectado"
                                    for c in d["cps"]))
    assert doc["counts"]["Desconectado"] == 1


def colour(driver, cp_id: str) -> str:
    return driver.execute_script(
        "const td = document.querySelector(`#board tr[data-cp='${arguments[0]}'] td.state`);"
        "return td ? getComputedStyle(td).color : '';", cp_id)


def test_the_board_in_a_real_browser(network, tmp_path: Path):
    net, web = network
    with chromium() as driver:
        driver.get(web.url + "/")
        wait_for(lambda: row_states(driver) == {"CP-01": "Activado", "CP-02": "Activado"}, 10,
                 lambda: f"two rows Activado, got {row_states(driver)}")
        green = colour(driver, "CP-01")
        assert green == "rgb(27, 127, 59)", green
        # the attacker's location is text, and ran nothing
        loc = driver.execute_script(
            "return document.querySelector(\"#board tr[data-cp='CP-02'] td.loc\").textContent")
        assert loc == XSS
        assert driver.execute_script("return window.__pwned === undefined "
                                     "&& document.querySelectorAll('#board img').length === 0")
        # a supply: its row turns Suministrando, and its kWh rise without a reload
        marker = driver.execute_script("window.__same_page = 1; return 1")
        driver_proc = net.start_driver("D-1", ["CP-01"], "--charge-seconds", "600")
        driver_proc.wait_line("AUTHORIZED at CP-01", timeout=20)

        def kwh() -> float | None:
            text = driver.execute_script(
                "const td = document.querySelector(\"#board tr[data-cp='CP-01'] td.detail\");"
                "return td ? td.textContent : ''")
            try:
                return float(text.split(" kWh")[0].split()[-1]) if " kWh" in text else None
            except ValueError:
                return None
        first = wait_for(lambda: (kwh() or 0) > 0 and kwh(), 15,
                         lambda: f"kWh on CP-01's row, got {row_states(driver)}")
        wait_for(lambda: (kwh() or 0) > first, 15, f"CP-01's kWh to rise past {first}")
        assert row_states(driver)["CP-01"] == "Suministrando"
        driver.save_screenshot(str(tmp_path / "web-board.png"))
        # a monitor killed: its row turns grey within 2 s of central saying so
        net.monitors["CP-02"].kill()
        net.wait_state("CP-02", "Desconectado", timeout=15)
        seen = time.monotonic()
        wait_for(lambda: row_states(driver).get("CP-02") == "Desconectado", 2,
                 lambda: f"CP-02 grey within 2 s, got {row_states(driver)}")
        assert time.monotonic() - seen <= 2.5
        assert colour(driver, "CP-02") == "rgb(122, 122, 122)"
        assert marker == driver.execute_script("return window.__same_page")  # no reload
        # the web server killed: the page says so, and recovers when it is back
        web.proc.kill()
        wait_for(lambda: driver.execute_script(
            "return !document.getElementById('link').hidden"), 10, "the page to say so")
        again = Proc(["web", net.kafka, "--listen", f"127.0.0.1:{web.port}",
                      "--topic-prefix", net.prefix], name="web again")
        net.procs.append(again)
        again.wait_line("evc web: the board at", timeout=30)
        wait_for(lambda: driver.execute_script(
            "return document.getElementById('link').hidden"), 15, "the page to recover")
        wait_for(lambda: row_states(driver).get("CP-01") == "Suministrando", 10,
                 "the board again")
        driver_proc.stop(5)

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
from tests.helpers import Proc, free_port, holds, wait_for
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
        # central killed -9: the page says since when it is unavailable, and recovers
        banner = lambda: driver.find_element("id", "central").text  # noqa: E731
        net.central.kill()
        wait_for(lambda: banner().startswith("CENTRAL UNAVAILABLE since"), 10,
                 lambda: f"the page to say central is unavailable, it says {banner()!r}")
        net.start_central("--security", "open")
        wait_for(lambda: banner().startswith("central "), 15,
                 lambda: f"the page to see central back, it says {banner()!r}")
        assert marker == driver.execute_script("return window.__same_page")
        driver_proc.stop(5)


# ---------------------------------------------------------------------------- operators
def add_operator(net: Network, name: str = "ana") -> tuple[str, str]:
    """``add-operator`` at central's console: the password and the script's token."""
    net.central.send(f"add-operator {name}")
    line = net.central.wait_line(f"operator {name}: password", timeout=10)
    password = line.split(" password ", 1)[1].split()[0]
    token = line.rsplit("Bearer ", 1)[1].strip()
    return password, token


def call(web: Web, path: str, method: str = "POST", body: dict | None = None,
         headers: dict[str, str] | None = None, source: str = "127.0.0.1"):
    """An HTTP request from ``source`` (any 127.x address): (status, headers, JSON or text)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=15,
                                      source_address=(source, 0))
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs |= headers or {}
    conn.request(method, path, body=data, headers=hdrs)
    res = conn.getresponse()
    raw = res.read()
    conn.close()
    kind = res.getheader("Content-Type", "")
    return res.status, dict(res.getheaders()), json.loads(raw) if "json" in kind else raw


def log_in(web: Web, name: str, password: str) -> tuple[str, str]:
    status, headers, doc = call(web, "/api/login", body={"name": name, "password": password})
    assert status == 200, doc
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    return cookie.split(";", 1)[0], doc["csrf"]


def test_operators_log_in_and_act_through_central_and_nothing_else_changes(network):
    net, web = network
    password, token = add_operator(net)
    # a supply, so that there is a ticket to list
    d = net.start_driver("D-1", ["CP-02"], "--charge-seconds", "2")
    d.wait_line("TICKET at CP-02", timeout=30)
    # without login: only GET, and no driver ids
    for path, method in (("/api/cps/CP-01/stop", "POST"), ("/api/command", "POST"),
                         ("/api/sessions", "GET"), ("/api/tickets.csv", "GET")):
        status, _, doc = call(web, path, method, body={} if method == "POST" else None)
        assert status == 401 and doc["error"]["status"] == 401, (path, doc)
    assert b"D-1" not in web.get("/api/board")[2]
    status, _, doc = call(web, "/api/login", body={"name": "ana", "password": "wrong"})
    assert status == 401 and "wrong password" in doc["error"]["message"]
    cookie, csrf = log_in(web, "ana", password)
    me = call(web, "/api/me", "GET", headers={"Cookie": cookie})[2]
    assert me == {"operator": "ana", "csrf": csrf}
    # a cookie's POST needs its CSRF token, and comes from this site's pages only
    status, _, doc = call(web, "/api/cps/CP-01/stop", body={}, headers={"Cookie": cookie})
    assert status == 403 and "CSRF" in doc["error"]["message"]
    status, _, _ = call(web, "/api/cps/CP-01/stop", body={}, headers={
        "Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.example"})
    assert status == 403
    assert web.states()["CP-01"] == "Activado"
    status, _, doc = call(web, "/api/cps/CP-01/stop", body={},
                          headers={"Cookie": cookie, "X-CSRF-Token": csrf})
    assert status == 200 and doc["ok"], doc
    net.wait_state("CP-01", "Parado", timeout=10)
    wait_for(lambda: web.states()["CP-01"] == "Parado", 5, "CP-01 Parado on the web")
    # central audits it with the operator's name and where it came from
    from evc.store import read_audit
    audit = [r for r in read_audit(net.db.with_name("central.audit.jsonl"))
             if r.get("line") == "stop CP-01"]
    assert audit and audit[-1]["by"] == "ana@127.0.0.1", audit
    # and the web shows its audit (replicated with central's state) to operators
    assert call(web, "/api/audit", "GET")[0] == 401

    def audited() -> list:
        doc = call(web, "/api/audit?event=operator", "GET", headers={"Cookie": cookie})[2]
        return [e for e in doc["events"] if e.get("line") == "stop CP-01"]
    (event,) = wait_for(audited, 10, "the stop in the web's audit")
    assert event["by"] == "ana@127.0.0.1"
    # a script's token
    bearer = {"Authorization": f"Bearer {token}"}
    status, _, doc = call(web, "/api/cps/CP-01/resume", body={}, headers=bearer)
    assert status == 200, doc
    net.wait_state("CP-01", "Activado", timeout=10)
    status, _, doc = call(web, "/api/cps/CP-01/price", body={"price": 0.55}, headers=bearer)
    assert status == 200 and "0.55" in doc["text"], doc
    wait_for(lambda: web.json("/api/cps/CP-01")["price_eur_kwh"] == 0.55, 10, "the new price")
    bad = {"Authorization": "Bearer ana." + "0" * 64}
    assert call(web, "/api/cps/CP-01/stop", body={}, headers=bad)[0] == 401
    for line, want in (("quit", 403), ("add-operator eve", 403), ("fly away", 400),
                       ("stop CP-99", 409)):
        status, _, doc = call(web, "/api/command", body={"command": line}, headers=bearer)
        assert status == want, (line, status, doc)
    # sessions and tickets, for operators
    sessions = call(web, "/api/sessions?status=closed", "GET", headers=bearer)[2]
    (s,) = [x for x in sessions["sessions"] if x["driver_id"] == "D-1"]
    status, headers, text = call(web, "/api/tickets.csv", "GET", headers=bearer)
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = text.decode().splitlines()
    assert rows[0].startswith("session_id,cp_id,driver_id,started_at,ended_at,consumo_kwh")
    (row,) = [r for r in rows[1:] if s["session_id"] in r]
    assert f",{s['consumo_kwh']}," in row and ",D-1," in row
    assert call(web, "/api/sessions?status=maybe", "GET", headers=bearer)[0] == 400
    # logging out ends the session
    assert call(web, "/api/logout", body={}, headers={"Cookie": cookie,
                                                      "X-CSRF-Token": csrf})[0] == 200
    assert call(web, "/api/me", "GET", headers={"Cookie": cookie})[2]["operator"] is None


def test_failed_logins_are_limited_per_address_and_name(network):
    net, web = network
    password, _ = add_operator(net)
    for _ in range(5):
        status, _, _ = call(web, "/api/login", body={"name": "ana", "password": "guess"},
                            source="127.0.0.3")
        assert status == 401
    status, headers, doc = call(web, "/api/login", body={"name": "bob", "password": "x"},
                                source="127.0.0.3")
    assert status == 429 and int(headers["Retry-After"]) > 0, doc
    # the name too, from anywhere: even the right password waits
    status, _, _ = call(web, "/api/login", body={"name": "ana", "password": password},
                        source="127.0.0.4")
    assert status == 429
    # another operator from another address is not held up
    other, _ = add_operator(net, "luis")
    log_in(web, "luis", other)
    assert net.central.wait_line("refused a command from 127.0.0.3 as operator ana",
                                 timeout=5)


def test_an_operator_in_a_real_browser(network, tmp_path: Path):
    """Log in on the page, stop a CP with its button and see it turn orange without a
    reload; a running supply's row opens its kWh curve."""
    from selenium.webdriver.common.by import By

    net, web = network
    password, _ = add_operator(net)
    d = net.start_driver("D-7", ["CP-02"], "--charge-seconds", "600")
    d.wait_line("AUTHORIZED at CP-02", timeout=20)
    with chromium() as driver:
        driver.get(web.url + "/")
        wait_for(lambda: len(row_states(driver)) == 2, 10, "the rows")
        assert not driver.find_element(By.ID, "operator").is_displayed()
        driver.find_element(By.ID, "login-name").send_keys("ana")
        driver.find_element(By.ID, "login-password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        wait_for(lambda: driver.find_element(By.ID, "operator").is_displayed(), 10,
                 lambda: "the operator's section, page says: "
                 + driver.find_element(By.ID, "said").text)
        assert driver.execute_script("return document.cookie") == ""  # HttpOnly
        marker = driver.execute_script("window.__same_page = 7; return 7")
        # the operator sees who charges
        wait_for(lambda: "D-7" in driver.find_element(
            By.CSS_SELECTOR, "#board tr[data-cp='CP-02'] td.detail").text, 10, "D-7 on CP-02")
        driver.find_element(By.CSS_SELECTOR,
                            "#board tr[data-cp='CP-01'] td.op button").click()
        wait_for(lambda: row_states(driver).get("CP-01") == "Parado", 10,
                 lambda: f"CP-01 Parado, got {row_states(driver)}; page says "
                 + driver.find_element(By.ID, "said").text)
        assert colour(driver, "CP-01") == "rgb(217, 115, 13)"  # orange
        net.wait_state("CP-01", "Parado", timeout=5)
        # CP-02's curve
        driver.find_element(By.CSS_SELECTOR, "#board tr[data-cp='CP-02'] td.id").click()
        wait_for(lambda: driver.execute_script(
            "const p = document.querySelector('#curve polyline');"
            "return p && p.getAttribute('points').split(' ').length >= 2"), 20,
            "a kWh curve of CP-02's supply")
        driver.save_screenshot(str(tmp_path / "web-operator.png"))
        assert marker == driver.execute_script("return window.__same_page")
    d.stop(5)


def test_after_a_failover_the_new_active_central_takes_the_operators_commands(
        net: Network, procs: list[Proc]):
    """Two centrals: the account made on the active one is replicated; a command is
    applied once (the standby does not read operator_topic), and after kill -9 of the
    active one the standby that takes over applies them."""
    from tests.flow.test_failover import start_cp

    net.start_central("--security", "open")
    b_port = free_port()
    b = Proc(["central", str(b_port), net.kafka, str(net.tmp / "b.json"), "--listen-host",
              "127.0.0.1", "--topic-prefix", net.prefix, "--security", "open"], name="central B")
    procs.append(b)
    b.wait_line("standby: following the active central", timeout=40)
    monitor = start_cp(net, "CP-01", net.port, b_port)
    web = Web(net, procs)
    wait_for(lambda: web.states().get("CP-01") == "Activado", 20, "CP-01 on the web")
    # the standby says it is there: the web names it
    wait_for(lambda: [s for s in web.json("/api/central")["standbys"]
                      if s.endswith(f":{b_port}")], 10, "central B as the standby on the web")
    _, token = add_operator(net)
    bearer = {"Authorization": f"Bearer {token}"}
    status, _, doc = call(web, "/api/cps/CP-01/stop", body={}, headers=bearer)
    assert status == 200, doc
    wait_for(lambda: web.states()["CP-01"] == "Parado", 10, "CP-01 Parado")
    assert not [ln for ln in b.lines if "stop CP-01" in ln]
    net.central.kill()
    b.wait_line("central ready (active", timeout=20)
    wait_for(lambda: call(web, "/api/cps/CP-01/resume", body={}, headers=bearer)[0] == 200,
             30, "the new active central to take the command")
    assert web.json("/api/central")["standbys"] == []  # B took over: no standby now
    wait_for(lambda: web.states()["CP-01"] == "Activado", 15,
             lambda: f"CP-01 Activado after the failover, got {web.states()}\n"
             f"monitor:\n{monitor.output[-2000:]}\ncentral B:\n{b.output[-3000:]}")


def test_the_page_says_when_the_broker_is_away_and_recovers(prefix, tmp_path, procs):
    """A broker of this test's own, stopped for 15 s while a browser watches: the page
    says Kafka is unavailable (this web server cannot reach it), then recovers by itself,
    and the operator's commands work again."""
    from tests.helpers import run_evc

    port, data = free_port(), str(tmp_path / "broker")
    started = run_evc(["broker", "start", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                       "--timeout", "120"], timeout=200)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        net = Network(f"127.0.0.1:{port}", prefix, tmp_path, procs)
        net.cps_file.write_text("id,location,price_eur_kwh\nCP-01,C/Italia 5,0.35\n")
        net.start_central("--security", "open")
        net.start_cp("CP-01")
        web = Web(net, procs)
        _, token = add_operator(net)
        with chromium() as driver:
            driver.get(web.url + "/")
            banner = lambda: driver.find_element("id", "central").text  # noqa: E731
            wait_for(lambda: banner().startswith("central "), 15, "central live on the page")
            stopped = run_evc(["broker", "stop", "--data-dir", data], timeout=60)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            wait_for(lambda: banner().startswith("KAFKA UNAVAILABLE"), 15,
                     lambda: f"the page to say Kafka is away, it says {banner()!r}")
            assert call(web, "/api/cps/CP-01/stop", body={}, headers={
                "Authorization": f"Bearer {token}"})[0] in (401, 503)
            # the outage: 15 s, and the page says so all along
            holds(lambda: banner().startswith("KAFKA UNAVAILABLE")
                  and web.proc.popen.poll() is None, 15,
                  lambda: f"the page saying Kafka is away: {banner()!r}", interval=0.5)
            again = run_evc(["broker", "start", "--listen", f"127.0.0.1:{port}",
                             "--data-dir", data, "--timeout", "120"], timeout=200)
            assert again.returncode == 0, again.stdout + again.stderr
            wait_for(lambda: banner().startswith("central "), 60,
                     lambda: f"the page to see Kafka and central back, it says {banner()!r}")
            wait_for(lambda: call(web, "/api/cps/CP-01/stop", body={}, headers={
                "Authorization": f"Bearer {token}"})[0] == 200, 30, "a command again")
            wait_for(lambda: row_states(driver).get("CP-01") == "Parado", 15,
                     lambda: f"CP-01 Parado on the page, got {row_states(driver)}")
        assert web.proc.popen.poll() is None
    finally:
        run_evc(["broker", "stop", "--data-dir", data], timeout=120)

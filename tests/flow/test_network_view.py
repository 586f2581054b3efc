"""The seed's bare messages from foreign clients, and the network seen from anywhere:
`evc status`, `evc driver --list`, "central unavailable" on every screen (R10)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer

from tests.helpers import Proc, run_evc, wait_for
from tests.network import Network
from tests.terminal import Terminal

pytestmark = pytest.mark.central()

GREEN, RED, ORANGE, GREY = "green", "red", "ff8700", "brightblack"


class ForeignMonitor:
    """A monitor written by another team: raw frames, no evc code."""

    def __init__(self, port: int, cp_id: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.cp_id = cp_id
        self.stop = threading.Event()
        self.send({"type": "register", "cp_id": cp_id, "location": "Foreign 1",
                   "health": "OK"})
        self.thread = threading.Thread(target=self.beat)
        self.thread.start()

    def send(self, obj: dict) -> None:
        payload = json.dumps(obj).encode()
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def beat(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.wait(0.5):
            try:
                self.send({"type": "heartbeat", "cp_id": self.cp_id})
                self.sock.recv(65536)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def plain_consumer(kafka: str, topic: str) -> KafkaConsumer:
    return KafkaConsumer(topic, bootstrap_servers=kafka, auto_offset_reset="earliest",
                         consumer_timeout_ms=200)


def records(consumer: KafkaConsumer, seen: list[dict]) -> list[dict]:
    for record in consumer:
        if record.value is not None:
            seen.append(json.loads(record.value))
    return seen


def test_the_seeds_bare_shapes_are_served(kafka, prefix, tmp_path, procs):
    """A foreign driver and a foreign engine send exactly the seed's keys (no type, msg_id
    or ts), with a plain kafka-python client: answered, supplied, ticketed (the open
    level: the seed's clients carry no credentials)."""
    net = Network(kafka, prefix, tmp_path, procs)
    net.start_central("--security", "open")
    foreign = ForeignMonitor(net.port, "CP-03")
    try:
        net.wait_state("CP-03", "Activado")
        kafka_producer = KafkaProducer(bootstrap_servers=kafka)

        class producer:  # noqa: N801 - a plain client's JSON, by hand
            @staticmethod
            def send(topic, value, **kw):
                return kafka_producer.send(topic, json.dumps(value).encode(), **kw)

            flush = kafka_producer.flush
            close = kafka_producer.close
        control = plain_consumer(kafka, f"{prefix}control_topic")
        seen: list[dict] = []
        # a request from an hour ago (its Kafka timestamp) has expired
        producer.send(f"{prefix}requests_topic", {"driver_id": 24, "cp_id_solicitado": "CP-03"},
                      key=b"CP-03", timestamp_ms=int((time.time() - 3600) * 1000))
        producer.send(f"{prefix}requests_topic", {"driver_id": 23, "cp_id_solicitado": "CP-03"},
                      key=b"CP-03")
        producer.flush()

        def answer(driver: str) -> dict | None:
            return next((r for r in records(control, seen) if r.get("driver_id") == driver
                         and "authorized" in r), None)

        expired = wait_for(lambda: answer("24"), 15, "an answer to the old request")
        assert expired["authorized"] is False and expired["code"] == "expired"
        auth = wait_for(lambda: answer("23"), 15, "an answer to the bare request")
        assert auth["authorized"] is True and auth["cp_id"] == "CP-03"
        start = next(r for r in records(control, seen) if r.get("type") == "start_supply")
        assert start["cp_id"] == "CP-03" and start["driver_id"] == "23"
        price = start["price_eur_kwh"]
        net.wait_state("CP-03", "Suministrando")
        for kwh in (0.5, 1.0):
            producer.send(f"{prefix}telemetry_topic", {"cp_id": "CP-03", "driver_id": "23",
                                                       "consumo_kwh": kwh, "importe_eur": 99.0},
                          key=b"CP-03")
        producer.send(f"{prefix}telemetry_topic", {"cp_id": "CP-03", "driver_id": "23",
                                                   "consumo_kwh": 1.5, "importe_eur": 99.0,
                                                   "final": True}, key=b"CP-03")
        producer.flush()
        ticket = wait_for(lambda: next((r for r in records(control, seen)
                                        if r.get("type") == "ticket"), None), 15, "a ticket")
        assert ticket["driver_id"] == "23" and ticket["cp_id"] == "CP-03"
        assert ticket["consumo_kwh"] == 1.5
        assert ticket["importe_eur"] == round(1.5 * price, 2)  # central's price, not 99 €
        assert ticket["session_id"] == auth["session_id"]
        net.wait_state("CP-03", "Activado")
        producer.close()
        control.close()
    finally:
        foreign.close()


def test_driver_list_shows_the_available_cps_and_whether_central_is_there(net, kafka, prefix):
    net.start_cp("CP-01")
    net.start_cp("CP-02")
    net.central.send("stop CP-02")
    net.wait_state("CP-02", "Parado")
    args = ["driver", kafka, "D-1", "--list", "--topic-prefix", prefix]
    listed = wait_for(lambda: (r := run_evc(args)) and "CP-02" not in r.stdout
                      and "CP-01" in r.stdout and r, 20, "CP-01 listed, CP-02 not")
    assert listed.returncode == 0, listed.stderr
    assert "central is available" in listed.stdout
    assert "1 of 3 charge points available" in listed.stdout
    assert "C/Italia 5" in listed.stdout and "0.35 €/kWh" in listed.stdout
    net.central.kill()
    gone = run_evc(args)
    assert "central unavailable" in gone.stdout


def test_a_driver_says_why_before_asking_for_a_cp_that_is_not_available(net, kafka, prefix):
    net.start_cp("CP-01")
    net.engines["CP-01"].send("f")
    net.wait_state("CP-01", "Averiado")
    d = Proc(["driver", kafka, "D-1", "--topic-prefix", prefix], name="driver")
    net.procs.append(d)
    d.send("list")
    d.wait_line("0 of 3 charge points available")
    d.send("CP-01")
    d.wait_line("CP-01 is out of service (fault) right now; asking central anyway")
    d.wait_line("DENIED at CP-01")
    d.send("")
    assert d.popen.wait(15) == 0


def test_status_once_json_and_colours(net, kafka, prefix):
    net.start_cp("CP-01")
    net.start_cp("CP-02")
    net.central.send("stop CP-02")
    net.wait_state("CP-02", "Parado")
    net.engines["CP-01"].send("f")
    net.wait_state("CP-01", "Averiado")

    def doc() -> dict:
        result = run_evc(["status", kafka, "--json", "--topic-prefix", prefix])
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    states = wait_for(lambda: (d := doc()) and {c["cp_id"]: c["state"] for c in d["cps"]}
                      == {"CP-01": "Averiado", "CP-02": "Parado", "CP-03": "Desconectado"}
                      and d, 20, "the three states in --json")
    assert states["central"]["available"] is True
    term = Terminal(["status", kafka, "--once", "--topic-prefix", prefix], cols=80, rows=24)
    try:
        term.wait_text("Desconectado")
        assert term.proc.wait(15) == 0
        rows = {line.split()[0]: y for y, line in enumerate(term.lines()) if line[:3] == "CP-"}
        assert term.colour_of(rows["CP-01"], "Averiado") == RED
        assert term.colour_of(rows["CP-02"], "Parado") == ORANGE
        assert term.colour_of(rows["CP-03"], "Desconectado") == GREY
        assert "never seen" in term.lines()[rows["CP-03"]]
    finally:
        term.stop()


def test_central_killed_status_and_drivers_say_unavailable_and_recover(net, kafka, prefix,
                                                                         procs):
    net.start_cp("CP-01")
    status = Proc(["status", kafka, "--topic-prefix", prefix], name="status")  # plain lines
    procs.append(status)
    status.wait_line("central available", timeout=20)
    d = Proc(["driver", kafka, "D-1", "--topic-prefix", prefix], name="driver")
    procs.append(d)
    d.send("list")
    d.wait_line("central is available")
    net.central.kill()
    status.wait_line("central unavailable", timeout=6)
    d.wait_line("central unavailable since", timeout=6)
    net.engines["CP-01"].wait_line("central unavailable since", timeout=6)
    net.start_central()
    status.wait_line("central available", count=2, timeout=20)
    d.wait_line("central is back", timeout=20)
    net.engines["CP-01"].wait_line("central is back", timeout=20)
    net.wait_state("CP-01", "Activado", timeout=20)  # its monitor registered again
    d.send("CP-01")
    d.wait_line("AUTHORIZED at CP-01", timeout=20)

"""The web board's model, without Kafka or HTTP: what the public and an operator see."""

from __future__ import annotations

import csv
import io
import json

from evc.protocol import messages as m
from evc.web.model import WebModel


def session(sid: str, cp: str, driver: str, **extra) -> tuple[str, str]:
    rec = {"session_id": sid, "cp_id": cp, "driver_id": driver, "status": "open",
           "started_at": 1000.0, "consumo_kwh": 0.0, "importe_eur": 0.0,
           "price_eur_kwh": 0.3} | extra
    return f"sessions/{sid}", json.dumps(rec)


def network() -> WebModel:
    model = WebModel()
    model.on_network(m.CentralStatus(central="pc2 pid 1", started_at=900.0), True)
    model.on_network(m.CPStatus(cp_id="CP-01", location="Calle 1", price_eur_kwh=0.3,
                                state=m.CPState.SUMINISTRANDO, kw=11.0), True)
    model.on_network(m.CPStatus(cp_id="CP-02", location="<img src=x onerror=alert(1)>",
                                price_eur_kwh=0.4, state=m.CPState.ACTIVADO), True)
    model.on_changelog(*session("s1", "CP-01", "D-23", consumo_kwh=1.5, importe_eur=0.45))
    return model


def test_the_public_board_hides_drivers_and_the_operators_shows_them():
    model = network()
    public = model.board(operator=False)
    row = next(c for c in public["cps"] if c["cp_id"] == "CP-01")
    assert row["supply"] == {"consumo_kwh": 1.5, "importe_eur": 0.45, "started_at": 1000.0}
    assert "D-23" not in json.dumps(public)
    assert public["counts"]["Suministrando"] == 1 and public["counts"]["Activado"] == 1
    assert [c["cp_id"] for c in public["cps"] if c["free"]] == ["CP-02"]
    operator = model.board(operator=True)
    row = next(c for c in operator["cps"] if c["cp_id"] == "CP-01")
    assert row["supply"]["driver_id"] == "D-23" and row["supply"]["session_id"] == "s1"
    assert model.cp("CP-02", operator=False)["location"] == "<img src=x onerror=alert(1)>"
    assert model.cp("CP-99", operator=False) is None


def test_a_running_supply_draws_a_curve_and_its_end_makes_a_ticket_row():
    model = network()
    for t, kwh in ((1001.0, 2.0), (1002.0, 2.5)):
        model.on_changelog(*session("s1", "CP-01", "D-23", consumo_kwh=kwh), now=t)
    assert [k for _, k in model.cp("CP-01", operator=True)["curve"]] == [1.5, 2.0, 2.5]
    assert "curve" not in model.cp("CP-01", operator=False)
    model.on_changelog(*session("s1", "CP-01", "=HYPERLINK(\"x\")", status="closed",
                                consumo_kwh=3.0, importe_eur=0.9, ended_at=1010.0,
                                reason="finished", ticket_id="t1"))
    assert model.cp("CP-01", operator=True)["curve"] == []
    rows = list(csv.DictReader(io.StringIO(model.tickets_csv())))
    assert len(rows) == 1 and rows[0]["consumo_kwh"] == "3.0" and rows[0]["reason"] == "finished"
    assert rows[0]["driver_id"].startswith("'=")  # never a spreadsheet formula
    assert model.sessions_doc("open", 0)["count"] == 0
    assert model.sessions_doc("closed", 0)["sessions"][0]["importe_eur"] == 0.9
    assert model.sessions_doc("closed", 2000)["count"] == 0  # started before ``since``


def test_central_archiving_a_closed_session_keeps_it_here_and_bad_records_are_skipped():
    model = network()
    model.on_changelog(*session("s1", "CP-01", "D-23", status="closed", ended_at=1010.0))
    model.on_changelog("sessions/s1", None)  # archived by central: still a ticket here
    model.on_changelog("sessions/s2", "{not json")
    model.on_changelog("sessions/s3", json.dumps([1, 2]))
    model.on_changelog("cps/CP-01", json.dumps({"cp_id": "CP-01"}))
    assert [s["session_id"] for s in model.sessions_doc(None, 0)["sessions"]] == ["s1"]
    model.on_changelog(*session("s4", "CP-02", "D-1"))
    model.on_changelog("sessions/s4", None)  # an open one removed: gone
    assert model.sessions_doc("open", 0)["count"] == 0


def test_a_delta_holds_what_changed_since_the_last_one():
    model = network()
    model.take_changes()
    model.on_network(m.CPStatus(cp_id="CP-02", location="x", price_eur_kwh=0.4,
                                state=m.CPState.PARADO), True)
    model.on_network(m.Removed(key="CP-01"), True)
    dirty, gone = model.take_changes()
    delta = json.loads(model.delta_json(dirty, gone, operator=False))
    assert [c["cp_id"] for c in delta["cps"]] == ["CP-02"] and delta["removed"] == ["CP-01"]
    assert delta["counts"]["Parado"] == 1 and delta["counts"]["Suministrando"] == 0
    assert delta["central"]["central"] == "pc2 pid 1"
    assert model.take_changes() == (set(), set())
    # the whole board as JSON, from the rows' cached JSON, is the board
    whole = json.loads(model.board_json(operator=True))
    assert whole["cps"] == model.board(operator=True)["cps"] and whole["operator"] is True
    model.on_changelog(*session("s9", "CP-02", "D-1"))  # a session's change is its CP's
    assert model.take_changes()[0] == {"CP-02"}


def test_the_audit_ring_is_shown_newest_first():
    model = network()
    for seq in (1, 2, 3):
        model.on_changelog(f"audit/{seq}", json.dumps({"slot": str(seq), "seq": seq,
                                                       "event": "operator", "line": "x"}))
    model.on_changelog("audit/9", "not json")
    model.on_changelog("audit/2", None)
    assert [e["seq"] for e in model.audit_doc()["events"]] == [3, 1]
    assert model.audit_doc(event="refused")["count"] == 0


def test_the_openapi_document_beside_the_docs_is_the_one_served():
    from pathlib import Path

    from evc.web.openapi import OPENAPI

    path = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
    assert json.loads(path.read_text(encoding="utf-8")) == OPENAPI, (
        "docs/openapi.json is stale: python -c 'import json; from evc.web.openapi import "
        "OPENAPI; print(json.dumps(OPENAPI, indent=1, ensure_ascii=False))' > "
        "docs/openapi.json")

"""The board's layout, rendered without a terminal (pure)."""

from __future__ import annotations

import re

import pytest

from evc.central.board import Board
from evc.central.brain import Brain
from evc.central.events import MonitorFrame
from evc.central.model import Settings
from evc.display import supports_256
from evc.protocol import messages as m
from evc.store import Store
from tests.fakes import FakeLink, FakeOutbox, RecordingView

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def brain(tmp_path):
    b = Brain(Store(tmp_path / "c.json"), FakeOutbox(), FakeLink(), RecordingView(),
              Settings(secure=False))
    for i in range(200):
        b.upsert_cp(f"CP-{i:03d}", f"Avenida de la Estación número {i}", 0.3)
    for i in range(0, 200, 3):
        b.apply(MonitorFrame(i + 1, "p", m.Register(cp_id=f"CP-{i:03d}")))
    b.apply(MonitorFrame(1, "p", m.FaultReport(cp_id="CP-000", reason="engine KO")))
    return b


@pytest.mark.parametrize("width, height", [(40, 12), (60, 20), (64, 20), (70, 22), (80, 24),
                                           (200, 60), (120, 250)])
def test_frame_fits_the_terminal(brain, width, height):
    lines = Board("title", True).render(brain, width, height, "central> typed")
    assert len(lines) == height
    for line in lines:
        assert len(ANSI.sub("", line)) <= width, line
    assert ANSI.sub("", lines[-1]) == "central> typed"


def test_problems_first_when_not_all_fit(brain):
    lines = [ANSI.sub("", ln) for ln in Board("t", True).render(brain, 100, 20, "> ")]
    rows = [ln for ln in lines if ln.startswith("CP-")]
    assert "Averiado" in rows[0]
    assert any("more not shown" in ln for ln in lines)


def test_orange_falls_back_to_yellow_on_8_colours(brain):
    brain.apply(MonitorFrame(999, "p", m.Register(cp_id="CP-199")))
    brain.stop_cp(brain.cps["CP-199"])
    rich = "\n".join(Board("t", True).render(brain, 120, 300, ""))
    poor = "\n".join(Board("t", False).render(brain, 120, 300, ""))
    assert "\x1b[38;5;208mParado" in rich
    assert "\x1b[33mParado" in poor and "38;5;208" not in poor
    assert supports_256({"TERM": "xterm-256color"})
    assert not supports_256({"TERM": "xterm"})


def test_a_supplying_row_keeps_its_figures_whole_in_80_columns(tmp_path):
    """The seed asks for driver, kWh and € live on that row: narrow terminals take space
    from the location, never from the figures."""
    from evc.central.events import BusMessage
    from evc.protocol.topics import Delivery

    brain = Brain(Store(tmp_path / "c.json"), FakeOutbox(), FakeLink(), RecordingView(),
              Settings(secure=False))
    for i in range(5):
        brain.upsert_cp(f"CP-{i:03d}", f"Avenida de la Estación número {i}", 0.3)
    brain.apply(MonitorFrame(900, "p", m.Register(cp_id="CP-001")))
    req = m.ChargeRequest(driver_id="D-12345678", cp_id="CP-001")
    brain.apply(BusMessage(req, Delivery("requests_topic", 0, 1)))
    session = brain.cps["CP-001"].session
    session.started_at -= 600  # ten minutes of supply: 123.5 kWh is plausible
    brain.apply(BusMessage(m.Telemetry(cp_id="CP-001", driver_id="D-12345678",
                                       consumo_kwh=123.5, importe_eur=0,
                                       session_id=session.session_id),
                           Delivery("telemetry_topic", 0, 1)))
    for width in (80, 100):
        lines = [ANSI.sub("", ln) for ln in Board("t", True).render(brain, width, 24, "> ")]
        row = next(ln for ln in lines if ln.startswith("CP-001 "))
        assert "D-12345678 123.50 kWh 37.05 €" in row, (width, row)

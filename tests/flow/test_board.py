"""The live board in a real pseudo-terminal, read back through a terminal emulator."""

from __future__ import annotations

import re
import time

import pytest

from evc.protocol import messages as m
from evc.protocol.topics import REQUESTS
from tests.helpers import free_port, wait_for
from tests.network import Network, signed
from tests.terminal import Terminal

GREEN = "green"
RED = "red"
ORANGE = "ff8700"  # xterm-256 colour 208
GREY = "brightblack"


@pytest.fixture
def board(kafka, prefix, tmp_path, procs):
    """Central with its board in a 120x40 terminal, five CPs in its registry."""
    net = Network(kafka, prefix, tmp_path, procs)
    net.cps_file.write_text("id,location,price_eur_kwh\n" + "".join(
        f"CP-0{i},Calle {i},0.3{i}\n" for i in range(1, 6)))
    term = Terminal(["central", str(net.port), kafka, str(net.db), "--listen-host", "127.0.0.1",
                     "--cps", str(net.cps_file), "--drivers", str(net.drivers_file),
                     "--topic-prefix", prefix])
    term.wait_text("central ready", timeout=40)
    net.term = term
    yield net
    assert term.stop() == 0
    assert b"Traceback" not in term.raw


def cp_row(term: Terminal, cp: str, word: str, timeout: float = 10.0) -> int:
    def found():
        y = term.row_with(f"{cp} ")
        return y is not None and word in term.lines()[y] and y + 1
    return wait_for(found, timeout, f"{cp} showing {word!r}:\n{term.text()}") - 1


def start_cp(net: Network, cp: str) -> None:
    net.start_engine(cp)
    net.start_monitor(cp)


def test_five_states_words_and_colours(board, bus):
    term = board.term
    row = cp_row(term, "CP-05", "Desconectado")
    assert term.colour_of(row, "Desconectado") == GREY
    assert "never seen" in term.lines()[row]
    for cp in ("CP-01", "CP-02", "CP-03", "CP-04"):
        start_cp(board, cp)
    assert term.colour_of(cp_row(term, "CP-01", "Activado"), "Activado") == GREEN
    term.type("stop CP-02\r")
    row = cp_row(term, "CP-02", "Parado")
    assert term.colour_of(row, "Parado") == ORANGE and "Out of Order" in term.lines()[row]
    board.engines["CP-03"].send("f")
    assert term.colour_of(cp_row(term, "CP-03", "Averiado"), "Averiado") == RED
    bus.send(REQUESTS, signed(m.ChargeRequest(driver_id="D-42", cp_id="CP-04")), "CP-04")
    bus.flush()
    row = cp_row(term, "CP-04", "Suministrando")
    assert term.colour_of(row, "Suministrando") == GREEN
    assert "D-42 " in term.lines()[row]  # the driver, on the supplying row itself
    def kwh():
        return re.search(r"(\d+\.\d\d) kWh", term.lines()[cp_row(term, "CP-04", "kWh")])
    seen = {kwh().group(1)}
    wait_for(lambda: seen.add(kwh().group(1)) or len(seen) >= 3, 10,
             "the live kWh to change on the board")
    board.monitors["CP-01"].kill()
    row = cp_row(term, "CP-01", "Desconectado", timeout=3)
    assert term.colour_of(row, "Desconectado") == GREY
    wait_for(lambda: "last seen" in term.lines()[cp_row(term, "CP-01", "Desconectado")], 5,
             "last seen on a lost CP")


def test_typing_survives_the_redraws(board):
    term = board.term
    start_cp(board, "CP-01")
    cp_row(term, "CP-01", "Activado")
    for ch in "stop CP-0":
        term.type(ch)
        time.sleep(0.15)  # type slower than the board redraws, on purpose
    wait_for(lambda: term.lines()[-1].startswith("central> stop CP-0"), 5, "the typed text")
    t_draw = len(term.raw)
    wait_for(lambda: len(term.raw) > t_draw + 500, 5, "a redraw while typing")
    assert term.lines()[-1].rstrip() == "central> stop CP-0"
    term.type("1\r")
    cp_row(term, "CP-01", "Parado")
    assert term.lines()[-1].rstrip() == "central>"
    term.type("frobnicate\r")
    term.wait_text("unknown command 'frobnicate'")
    term.type("stop CP-77\r")
    term.wait_text("unknown charge point 'CP-77'; nothing changed")
    term.type("add CP-06 \"Plaza Nueva 1\" 0.45\r")
    row = cp_row(term, "CP-06", "Desconectado")
    assert "Plaza Nueva 1" in term.lines()[row] and "0.45" in term.lines()[row]
    term.type("price CP-06 0.50\r")
    cp_row(term, "CP-06", "0.50")
    term.type("remove CP-06\r")
    wait_for(lambda: not any(ln.startswith("CP-06 ") for ln in term.lines()), 5,
             "CP-06 removed from the board")
    term.wait_text("removed CP-06 from the registry")


def test_the_console_line_takes_utf8_arrows_and_history(board):
    term = board.term
    term.type('add CP-11 "Plaza Espana" 0.3')
    term.type("\x1b[D" * 6 + "\x7f" + "ñ")  # left x6, backspace, ñ: Espana -> España
    wait_for(lambda: term.lines()[-1].rstrip() == 'central> add CP-11 "Plaza España" 0.3', 5,
             lambda: f"the edited line:\n{term.text()}")
    term.type("\r")
    row = cp_row(term, "CP-11", "Desconectado")
    assert "Plaza España" in term.lines()[row]
    term.type("\x1b[A")  # up: the last command again
    wait_for(lambda: term.lines()[-1].rstrip() == 'central> add CP-11 "Plaza España" 0.3', 5,
             lambda: f"the recalled line:\n{term.text()}")
    term.type("\x15remove CP-11\r")
    term.wait_text("removed CP-11 from the registry")


def test_quit_from_the_console(board):
    board.term.type("quit\r")
    assert board.term.proc.wait(5) == 0


def test_narrow_terminal_with_200_cps(kafka, prefix, tmp_path):
    csv = tmp_path / "many.csv"
    csv.write_text("".join(f"CP-{i:03d},Avenida muy larga número {i},0.{i % 90 + 10}\n"
                           for i in range(200)))
    term = Terminal(["central", str(free_port()), kafka, str(tmp_path / "db.json"),
                     "--listen-host", "127.0.0.1", "--cps", str(csv), "--topic-prefix", prefix],
                    cols=60, rows=20)
    try:
        term.wait_text("central ready", timeout=40)
        lines = term.lines()
        assert len(lines) == 20
        assert "EVCharging central" in lines[0]
        assert "Desc:200" in lines[1]  # counts per state, abbreviated to fit
        rows = [ln for ln in lines if re.match(r"CP-\d{3} ", ln)]
        assert 5 <= len(rows) < 20
        assert all("Desconectado" in r for r in rows)
        assert any("more not shown" in ln for ln in lines)
        assert lines[-1].startswith("central>")
        assert "Traceback" not in term.text()
    finally:
        assert term.stop() == 0


def test_plain_output_when_not_a_terminal(kafka, prefix, tmp_path, procs):
    net = Network(kafka, prefix, tmp_path, procs)
    central = net.start_central()  # stdout is a pipe, NO_COLOR set
    assert "\x1b[" not in central.output
    central.send("stop CP-01")
    central.wait_line("CP-01 stopped; it shows Desconectado until that clears, then Parado")
    net.start_engine("CP-01")
    net.start_monitor("CP-01")
    central.wait_line("CP-01 Desconectado -> Parado (monitor registered")

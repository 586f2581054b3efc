"""The network's table as people see it: the same words, colours and columns everywhere.

Central's board (``central/board.py``) and the read-only board of ``evc status`` both
draw charge points with ``render_table``: ID, location, price, the seed's state word in
its colour, and a detail. Narrow terminals take space from the location first and never
from the figures: a supplying row keeps its driver, kWh and € whole down to 80 columns.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from colorama import Fore, Style

from evc.protocol.ids import printable
from evc.protocol.messages import CPState

ORANGE_256 = "\x1b[38;5;208m"
GREY = "\x1b[90m"
RESET = Style.RESET_ALL
PROBLEM_ORDER = {
    CPState.AVERIADO: 0, CPState.DESCONECTADO: 1, CPState.PARADO: 2,
    CPState.SUMINISTRANDO: 3, CPState.ACTIVADO: 4,
}
LABEL = {
    CPState.ACTIVADO: "Activado",
    CPState.PARADO: "Parado (Out of Order)",
    CPState.SUMINISTRANDO: "Suministrando",
    CPState.AVERIADO: "Averiado",
    CPState.DESCONECTADO: "Desconectado",
}


def supports_256(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    term = env.get("TERM", "")
    return "256color" in term or env.get("COLORTERM", "") in ("truecolor", "24bit")


def palette(colors_256: bool) -> dict[CPState, str]:
    return {
        CPState.ACTIVADO: Fore.GREEN,
        CPState.SUMINISTRANDO: Fore.GREEN + Style.BRIGHT,
        CPState.PARADO: ORANGE_256 if colors_256 else Fore.YELLOW,
        CPState.AVERIADO: Fore.RED + Style.BRIGHT,
        CPState.DESCONECTADO: GREY,
    }


def fit(text: str, width: int) -> str:
    """``text`` padded or cut (with …) to exactly ``width`` characters."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text.ljust(width)
    return text[: max(0, width - 1)] + "…"


def ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@dataclass(frozen=True)
class Row:
    """One charge point as a table row (text already public and printable)."""

    cp_id: str
    location: str
    price: float
    state: CPState
    detail: str = ""
    proven: bool = False  # its monitor proved the CP's credential: orders and readings signed


def trust_word(proven: bool, state: CPState) -> str:
    """``signed``: proven (orders and readings signed); ``open``: served unproven; nothing
    for a CP not connected and never proven."""
    if proven:
        return "signed"
    return "" if state is CPState.DESCONECTADO else "open"


def render_table(rows: Sequence[Row], width: int, room: int,
                 colors: dict[CPState, str]) -> list[str]:
    """A header and the rows in ``room`` lines at most, none wider than ``width``.

    When not all rows fit, problems come first and the last line sums up the rest.
    """
    id_w = min(14, max([5] + [len(r.cp_id) for r in rows]))
    price_w = 6
    trust_w = 6 if width >= 64 else 0  # "signed" (proven) or "open", where there is room
    state_w = 22 if width >= 100 else 13
    fixed = id_w + price_w + state_w + 4 + (trust_w + 1 if trust_w else 0)
    need = max([6] + [len(r.detail) for r in rows])  # the details' figures stay whole
    det_w = max(0, min(need, width - fixed - 6))
    loc_w = max(6, min(28, width - fixed - det_w))
    det_w = max(0, width - fixed - loc_w)

    def trust(text: str) -> str:
        return f"{fit(text, trust_w)} " if trust_w else ""

    header = (f"{fit('ID', id_w)} {fit('Location', loc_w)} {fit('€/kWh', price_w)} "
              f"{trust('Trust')}{fit('State', state_w)} {fit('Detail', det_w)}")
    lines = [Style.DIM + fit(header, width) + RESET]
    room = max(1, room - 1)
    ordered = sorted(rows, key=lambda r: r.cp_id)
    if len(ordered) > room:  # not all fit: problems first, then a summary of the rest
        ordered.sort(key=lambda r: PROBLEM_ORDER[r.state])
        shown, hidden = ordered[: max(0, room - 1)], ordered[max(0, room - 1):]
    else:
        shown, hidden = ordered, []
    for r in shown:
        label = LABEL[r.state] if state_w >= 22 else LABEL[r.state].split(" ")[0]
        lines.append(f"{fit(r.cp_id, id_w)} {fit(printable(r.location), loc_w)} "
                     f"{fit(f'{r.price:.2f}', price_w)} "
                     f"{trust(trust_word(r.proven, r.state))}" + colors[r.state]
                     + fit(label, state_w) + RESET + " " + fit(printable(r.detail), det_w))
    if hidden:
        by_state: dict[CPState, int] = {}
        for r in hidden:
            by_state[r.state] = by_state.get(r.state, 0) + 1
        parts = ", ".join(f"{n} {LABEL[s].split(' ')[0]}" for s, n in by_state.items())
        lines.append(Style.DIM + fit(f"… {len(hidden)} more not shown ({parts}); "
                                     "problems are listed first", width) + RESET)
    return lines


def counts_line(counts: dict[CPState, int], colors: dict[CPState, str], width: int,
                extra: str = "") -> str:
    """`Activado 3  Parado 0 …` in colour, with ``extra`` dimmed if it fits."""
    plain = " " + "  ".join(f"{LABEL[s].split(' ')[0]} {counts[s]}" for s in CPState)
    if len(plain) > width:
        return fit(" ".join(f"{LABEL[s][:4]}:{counts[s]}" for s in CPState), width)
    coloured = " " + "  ".join(f"{colors[s]}{LABEL[s].split(' ')[0]} {counts[s]}{RESET}"
                               for s in CPState)
    return str(coloured + Style.DIM + extra[: width - len(plain)] + RESET)

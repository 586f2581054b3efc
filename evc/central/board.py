"""Central's live board and operator console, for a real terminal.

The board is redrawn in place from the top (cursor home, each line cleared to
its end, the rest of the screen cleared), at most every ``interval`` seconds
and whenever something changes. The operator's prompt is the last line: keys
arrive as events, so the brain thread owns both the board and the typed text,
and a refresh can never overwrite what is being typed.

Colours: Activado and Suministrando green, Parado orange (256-colour 208;
yellow on 8-colour terminals), Averiado red, Desconectado grey.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, TextIO

from colorama import Fore, Style, just_fix_windows_console

from evc.console import LineEditor
from evc.protocol.messages import CPState

if TYPE_CHECKING:
    from evc.central.brain import Brain, ChargePoint

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


def _fit(text: str, width: int) -> str:
    if width <= 0:
        return ""
    if len(text) <= width:
        return text.ljust(width)
    return text[: max(0, width - 1)] + "…"


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def detail(cp: ChargePoint, now: float) -> str:
    state = cp.state
    if state is CPState.SUMINISTRANDO and cp.session is not None:
        s = cp.session
        text = f"driver {s.driver_id}  {s.kwh:7.2f} kWh  {s.eur:7.2f} €"
        if s.end_reason is not None:
            text += f"  (ending: {s.end_reason})"
        elif not s.supplying:
            text += "  (starting)"
        return text
    if state is CPState.DESCONECTADO:
        if cp.last_seen:
            return f"last seen {_ago(max(0.0, now - cp.last_seen))} ago"
        return "never seen"
    if state is CPState.AVERIADO:
        return cp.fault_reason
    if state is CPState.PARADO:
        return "stopped by the operator"
    return ""


class Board:
    """Renders frames (pure: no I/O) from the brain's state."""

    def __init__(self, title: str, colors_256: bool) -> None:
        self.title = title
        self.colors = palette(colors_256)
        self.events: deque[tuple[float, str, str]] = deque(maxlen=50)

    def add_event(self, text: str, level: str = "info") -> None:
        self.events.append((time.time(), level, text))

    def render(self, brain: Brain, width: int, height: int, prompt: str) -> list[str]:
        """Exactly ``height`` lines (colour codes included), none wider than ``width``."""
        width = max(20, width)
        height = max(6, height)
        now = time.time()
        counts = brain.counts()
        lines: list[str] = []
        clock = time.strftime("%H:%M:%S")
        head = f" EVCharging central  {self.title}  {clock} "
        lines.append(Style.BRIGHT + _fit(head, width) + RESET)
        summary = "  ".join(f"{self.colors[s]}{LABEL[s].split(' ')[0]} {counts[s]}{RESET}"
                            for s in CPState)
        c = brain.counters
        totals = (f"   requests {c.requests}  authorized {c.authorized}  denied {c.denied}  "
                  f"tickets {c.tickets}")
        plain_len = len(" " + "  ".join(f"{LABEL[s].split(' ')[0]} {counts[s]}"
                                        for s in CPState))
        if plain_len <= width:
            extra = totals[: width - plain_len]
            lines.append(" " + summary + Style.DIM + extra + RESET)
        else:
            lines.append(_fit(" ".join(f"{LABEL[s][:4]}:{counts[s]}" for s in CPState), width))

        id_w = max([5] + [len(c) for c in brain.cps])
        id_w = min(id_w, 14)
        price_w = 10
        state_w = 22 if width >= 90 else 14
        fixed = id_w + price_w + state_w + 4
        loc_w = max(6, min(28, (width - fixed) // 3))
        det_w = max(0, width - fixed - loc_w - 1)
        header = (f"{_fit('ID', id_w)} {_fit('Location', loc_w)} {_fit('€/kWh', price_w)} "
                  f"{_fit('State', state_w)} {_fit('Detail', det_w)}")
        lines.append(Style.DIM + _fit(header, width) + RESET)

        n_events = min(5, max(1, (height - 8) // 4))
        room = height - len(lines) - (n_events + 1) - 1  # events block + prompt
        cps = sorted(brain.cps.values(), key=lambda c: c.cp_id)
        if len(cps) > room:  # not all fit: problems first, then a summary of the rest
            cps.sort(key=lambda c: PROBLEM_ORDER[c.state])
            shown, hidden = cps[: max(0, room - 1)], cps[max(0, room - 1):]
        else:
            shown, hidden = cps, []
        for cp in shown:
            state_text = LABEL[cp.state] if state_w >= 22 else LABEL[cp.state].split(" ")[0]
            plain = (f"{_fit(cp.cp_id, id_w)} {_fit(cp.location, loc_w)} "
                     f"{_fit(f'{cp.price:.2f}', price_w)} ")
            row = (plain + self.colors[cp.state] + _fit(state_text, state_w) + RESET + " "
                   + _fit(detail(cp, now), det_w))
            lines.append(row)
        if hidden:
            by_state: dict[CPState, int] = {}
            for cp in hidden:
                by_state[cp.state] = by_state.get(cp.state, 0) + 1
            parts = ", ".join(f"{n} {LABEL[s].split(' ')[0]}" for s, n in by_state.items())
            lines.append(Style.DIM + _fit(
                f"… {len(hidden)} more not shown ({parts}); problems are listed first",
                width) + RESET)
        while len(lines) < height - n_events - 2:
            lines.append("")
        lines.append(Style.DIM + ("─ events " + "─" * width)[:width] + RESET)
        recent = list(self.events)[-n_events:]
        for stamp, level, text in recent:
            colour = {"error": Fore.RED, "warning": Fore.YELLOW}.get(level, "")
            lines.append(colour + _fit(time.strftime("%H:%M:%S ", time.localtime(stamp)) + text,
                                       width) + (RESET if colour else ""))
        while len(lines) < height - 1:
            lines.append("")
        lines = lines[: height - 1]
        lines.append(prompt[-(width - 1):] if len(prompt) >= width else prompt)
        return lines


class BoardView:
    """The View for a terminal: draws the board, edits the operator's line."""

    PROMPT = "central> "

    def __init__(self, title: str, out: TextIO | None = None, interval: float = 0.5,
                 colors_256: bool | None = None) -> None:
        just_fix_windows_console()
        self.out = out or sys.stdout
        self.interval = interval
        self.board = Board(title, supports_256() if colors_256 is None else colors_256)
        self.editor = LineEditor()
        self.last_draw = 0.0
        self.dirty = True
        self._brain: Brain | None = None
        self._started = False

    # ------------------------------------------------------------------ View protocol
    def changed(self, cp: ChargePoint, old: CPState | None, new: CPState, why: str) -> None:
        self.board.add_event(f"{cp.cp_id} {old} → {new} ({why})",
                             "warning" if new in (CPState.AVERIADO, CPState.DESCONECTADO)
                             else "info")
        self.dirty = True

    def note(self, text: str, level: str = "info") -> None:
        self.board.add_event(text, level)
        self.dirty = True

    def refresh(self, brain: Brain) -> None:
        self._brain = brain
        now = time.monotonic()
        if self.dirty or now - self.last_draw >= self.interval:
            self.draw(brain)

    # ------------------------------------------------------------------ keys
    def key(self, ch: str) -> str | None:
        """One key from the operator; a finished line is returned (and cleared)."""
        line = self.editor.key(ch)
        if line:
            self.board.add_event(f"> {line}")
        self.dirty = True
        if self._brain is not None and line is None:
            self.draw(self._brain)
        return line or None

    # ------------------------------------------------------------------ terminal
    def start(self) -> None:
        self._write("\x1b[?1049h\x1b[2J")  # alternate screen: the shell's screen comes back
        self._started = True

    def stop(self) -> None:
        if self._started:
            self._write("\x1b[?25h\x1b[?1049l")
            self._started = False

    def draw(self, brain: Brain) -> None:
        size = shutil.get_terminal_size((100, 30))
        prompt = self.PROMPT + self.editor.text
        lines = self.board.render(brain, size.columns, size.lines, prompt)
        # the cursor goes where the operator is editing (the prompt keeps its tail in view)
        shown = len(lines[-1])
        column = shown - (len(prompt) - len(self.PROMPT) - self.editor.cursor)
        move = f"\r\x1b[{column}C" if column > 0 else "\r"
        frame = "\x1b[?25l\x1b[H" + "\x1b[K\r\n".join(lines) + "\x1b[K" + move + "\x1b[?25h"
        self._write(frame)
        self.last_draw = time.monotonic()
        self.dirty = False

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass

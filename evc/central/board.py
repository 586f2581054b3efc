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

import shutil
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, TextIO

from colorama import Fore, Style, just_fix_windows_console

from evc.central import power
from evc.console import LineEditor
from evc.display import (
    RESET,
    Row,
    ago,
    counts_line,
    fit,
    palette,
    render_table,
    supports_256,
)
from evc.netview import site_line
from evc.protocol.messages import CPState

if TYPE_CHECKING:
    from evc.central.brain import Brain
    from evc.central.model import ChargePoint

def detail(cp: ChargePoint, now: float) -> str:
    """The board's last column: the driver and live figures, or why the CP is out; an
    OCPP charger's is marked, with its own status (Charging, SuspendedEV, …)."""
    text = _detail(cp, now)
    if cp.via != "ocpp":
        return text
    shown = cp.charger_status and cp.state not in (CPState.DESCONECTADO, CPState.AVERIADO)
    mark = "[OCPP" + (f" {cp.charger_status}" if shown else "") + "]"
    return f"{mark} {text}" if text else mark


def _detail(cp: ChargePoint, now: float) -> str:
    state = cp.state
    if state is CPState.SUMINISTRANDO and cp.session is not None:
        s = cp.session
        text = f"{s.driver_id} {s.kwh:.2f} kWh {s.eur:.2f} €"
        if cp.site and s.target_kw is not None and s.target_kw <= 0 and s.end_reason is None:
            text += " (en espera: waiting for power)"
        elif s.kw:
            text += f" {s.kw:.1f} kW"
        if s.end_reason is not None:
            text += f" (ending: {s.end_reason})"
        elif not s.supplying:
            text += " (starting)"
        return text
    if state is CPState.DESCONECTADO:
        if cp.last_seen:
            return f"last seen {ago(max(0.0, now - cp.last_seen))} ago"
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
        if brain.bus_down_since is not None:  # the one thing the operator must see first
            down = time.strftime("%H:%M:%S", time.localtime(brain.bus_down_since))
            head = f" KAFKA UNAVAILABLE since {down}: supplies go on, requests wait  {clock} "
            lines.append(Fore.RED + Style.BRIGHT + fit(head, width) + RESET)
        elif getattr(brain, "banner", ""):  # a standby central: read-only
            head = f" {brain.banner}  (read-only)  {clock} "  # type: ignore[attr-defined]
            lines.append(Fore.YELLOW + Style.BRIGHT + fit(head, width) + RESET)
        else:
            head = f" EVCharging central  {self.title}  {clock} "
            lines.append(Style.BRIGHT + fit(head, width) + RESET)
        c = brain.counters
        totals = (f"   requests {c.requests}  authorized {c.authorized}  denied {c.denied}  "
                  f"tickets {c.tickets}")
        lines.append(counts_line(counts, self.colors, width, totals))
        lines += [fit(" site " + site_line(status), width)
                  for status in power.site_statuses(brain)]
        n_events = min(5, max(1, (height - 8) // 4))
        room = height - len(lines) - (n_events + 1) - 1  # events block + prompt
        rows = [Row(cp.cp_id, cp.location, cp.price, cp.state, detail(cp, now), cp.proven)
                for cp in brain.cps.values()]
        lines += render_table(rows, width, room, self.colors)
        while len(lines) < height - n_events - 2:
            lines.append("")
        lines.append(Style.DIM + ("─ events " + "─" * width)[:width] + RESET)
        recent = list(self.events)[-n_events:]
        for stamp, level, text in recent:
            colour = {"error": Fore.RED, "warning": Fore.YELLOW}.get(level, "")
            lines.append(colour + fit(time.strftime("%H:%M:%S ", time.localtime(stamp)) + text,
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

"""Plain-text view: one readable line per state change or event (logs, pipes, NO_COLOR)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from evc.protocol.messages import CPState

if TYPE_CHECKING:
    from evc.central.brain import Brain
    from evc.central.model import ChargePoint


def stamp() -> str:
    return time.strftime("%H:%M:%S")


class PlainView:
    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def _line(self, text: str) -> None:
        try:
            self.out.write(f"{stamp()} {text}\n")
            self.out.flush()
        except (OSError, ValueError):
            pass  # stdout gone (closed pipe): central keeps working

    def changed(self, cp: ChargePoint, old: CPState | None, new: CPState, why: str) -> None:
        detail = ""
        if new is CPState.SUMINISTRANDO and cp.session is not None:
            detail = f" driver {cp.session.driver_id}"
        self._line(f"{cp.cp_id} {old} -> {new}{detail} ({why})")

    def note(self, text: str, level: str = "info") -> None:
        prefix = {"error": "error: ", "warning": "warning: "}.get(level, "")
        self._line(f"{prefix}{text}")

    def refresh(self, brain: Brain) -> None:
        pass

    def key(self, ch: str) -> str | None:
        """Plain mode reads whole lines; a lone key is a one-letter line."""
        return ch.strip() or None

"""How long central's board takes to draw 1,000 CPs (target: under 50 ms of CPU).

    python -m benchmarks.board_render [--cps 1000] [--width 160] [--height 60]

Builds a brain with N registered CPs in mixed states (a third supplying),
renders the board frame through BoardView into memory, and prints CPU time
per frame (min / median / p95), both for a screen-sized frame and for a frame
tall enough to show every row.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from evc.central.board import Board
from evc.central.brain import Brain
from evc.central.events import MonitorFrame
from evc.central.model import Settings
from evc.protocol import messages as m
from evc.store import Store


class _Null:
    def send(self, *args: object, **kwargs: object) -> None:
        pass

    def batch(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def close_connection(self, *args: object, **kwargs: object) -> None:
        pass


class _Quiet:
    def changed(self, *a: object) -> None:
        pass

    def note(self, *a: object, **k: object) -> None:
        pass

    def refresh(self, brain: object) -> None:
        pass

    def key(self, ch: str) -> None:
        return None


def build(n: int, folder: Path) -> Brain:
    brain = Brain(Store(folder / "bench.json"), _Null(), _Null(), _Quiet(),
                  Settings(secure=False))
    for i in range(n):
        brain.upsert_cp(f"CP-{i:04d}", f"Calle del Punto de Recarga {i}", 0.30 + (i % 10) / 100)
    for i in range(n):
        if i % 7 == 6:
            continue  # Desconectado
        brain.apply(MonitorFrame(i + 1, "p", m.Register(cp_id=f"CP-{i:04d}")))
        if i % 11 == 0:
            brain.apply(MonitorFrame(i + 1, "p", m.FaultReport(cp_id=f"CP-{i:04d}")))
        elif i % 13 == 0:
            brain.stop_cp(brain.cps[f"CP-{i:04d}"])
        elif i % 3 == 0:
            brain.on_bus(m.ChargeRequest(driver_id=f"D-{i}", cp_id=f"CP-{i:04d}"))
    return brain


def measure(brain: Brain, width: int, height: int, rounds: int) -> list[float]:
    board = Board("bench", True)
    out = io.StringIO()
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        lines = board.render(brain, width, height, "central> ")
        out.write("\x1b[H" + "\x1b[K\r\n".join(lines))
        times.append(time.process_time() - t0)
        out.seek(0)
        out.truncate()
    return times


def report(label: str, times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    p95 = ms[int(len(ms) * 0.95) - 1]
    print(f"{label:42s} min {ms[0]:7.2f} ms  median {statistics.median(ms):7.2f} ms  "
          f"p95 {p95:7.2f} ms")
    return {"min_ms": round(ms[0], 2), "median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(p95, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cps", type=int, default=1000)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        brain = build(args.cps, Path(tmp))
        counts = ", ".join(f"{n} {s}" for s, n in brain.counts().items())
        print(f"board of {args.cps} CPs ({counts})")
        screen = report(f"screen {args.width}x{args.height}",
                        measure(brain, args.width, args.height, args.rounds))
        rows = report(f"every row ({args.width}x{args.cps + 20})",
                      measure(brain, args.width, args.cps + 20, args.rounds))
    if args.json:
        print(json.dumps({"cps": args.cps, "screen": screen, "every_row": rows}))


if __name__ == "__main__":
    main()

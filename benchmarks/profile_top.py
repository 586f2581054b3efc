"""The top of a py-spy profile: collapsed stacks (``py-spy record --format raw``) folded
into the functions that cost most, by their own samples and with what they call, and the
share of each library (kafka-python, evc's modules, the standard library).

    python -m benchmarks.profile_top runs/profile-<time>/central.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

THREAD = re.compile(r"^thread \(\d+\):? ?")
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def where(file: str) -> str:
    """Which code a frame's file belongs to (py-spy names files from their package)."""
    path = "/" + file.lstrip("/")
    if "/kafka/" in path:
        return "kafka-python"
    if "/evc/" in path:
        return "evc." + path.split("/evc/", 1)[1].removesuffix(".py").replace("/", ".")
    if "/benchmarks/" in path:
        return "benchmarks"
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    top = file.split("/", 1)[0]
    return top if "/" in file and top not in ("json", "email", "concurrent", "asyncio",
                                              "logging", "importlib") else "stdlib"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    library: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in args.samples.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f]
        if frames and THREAD.match(frames[0]):  # py-spy --threads: "thread (tid): name"
            threads[THREAD.sub("", frames.pop(0)) or "?"] += count
        names = []
        for frame in frames:
            m = FRAME.match(frame)
            names.append((m.group("func"), m.group("file")) if m else (frame, ""))
        if not names:
            continue
        func, file = names[-1]
        own[f"{func} [{where(file)}]"] += count
        library[where(file)] += count
        for name in {f"{f} [{where(fl)}]" for f, fl in names}:
            inclusive[name] += count
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples of central's threads (not idle)")
    print("\nby library (own samples):")
    for name, count in library.most_common(12):
        print(f"  {100 * count / total:5.1f} %  {name}")
    if threads:
        print("\nby thread:")
        for name, count in threads.most_common(12):
            print(f"  {100 * count / total:5.1f} %  {name}")
    print(f"\ntop {args.top} by own samples:")
    for name, count in own.most_common(args.top):
        print(f"  {100 * count / total:5.1f} %  {name}")
    print(f"\ntop {args.top} with what they call:")
    for name, count in inclusive.most_common(args.top):
        print(f"  {100 * count / total:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Where central's CPU goes under the 1,000-CP burst (benchmarks.scale, simulated load):
# py-spy (from PyPI) samples the running central process for the burst and the supplies
# that follow, only the thread holding the interpreter lock (--gil: what costs CPU, not
# what waits), each sample with its thread's name, then benchmarks.profile_top folds the
# samples into the threads, libraries and functions that cost most.
#
#   bash benchmarks/profile.sh [OUT_DIR]        (EVC_KAFKA: the broker, 127.0.0.1:9092)
#
# Writes OUT_DIR/central.txt (collapsed stacks: any flame-graph tool reads them),
# OUT_DIR/top.txt and OUT_DIR/scale.txt (the benchmark's own figures). Needs root or
# ptrace rights over the benchmark's processes (py-spy reads another process' memory).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/profile-$(date +%Y%m%d-%H%M%S)}
PY=${PYTHON:-.venv/bin/python}
KAFKA=${EVC_KAFKA:-127.0.0.1:9092}
SECONDS_PROFILED=${EVC_PROFILE_SECONDS:-30}
mkdir -p "$OUT"
"$PY" -m pip install -q "py-spy>=0.3,<0.5"
SPY="$(dirname "$PY")/py-spy"

"$PY" -m benchmarks.scale --real-cps 0 --real-drivers 0 --runs 1 --kafka "$KAFKA" \
  >"$OUT/scale.txt" 2>&1 &
bench=$!
trap 'kill "$bench" 2>/dev/null || true' EXIT

# central is the benchmark's child running `evc.cli central`; profile it once the
# simulated monitors registered (the burst follows at once)
central=""
for _ in $(seq 1 600); do
  central=$(pgrep -P "$bench" -f "evc.cli central" || true)
  if [ -n "$central" ] && grep -q "simulated monitors registered" "$OUT/scale.txt"; then
    break
  fi
  if ! kill -0 "$bench" 2>/dev/null; then
    echo "the benchmark ended before its burst:" >&2
    tail -20 "$OUT/scale.txt" >&2
    exit 1
  fi
  sleep 0.2
done
[ -n "$central" ] || { echo "central did not start" >&2; exit 1; }
"$SPY" record --pid "$central" --duration "$SECONDS_PROFILED" --rate ${EVC_PROFILE_RATE:-200} --gil --threads --nonblocking \
  --format raw --output "$OUT/central.txt" >/dev/null
wait "$bench" || true
trap - EXIT
"$PY" -m benchmarks.profile_top "$OUT/central.txt" | tee "$OUT/top.txt"
echo "figures: $OUT/scale.txt; samples: $OUT/central.txt"

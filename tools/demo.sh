#!/usr/bin/env bash
# From a fresh clone to the running demo: venv, install, then `evc demo` (which fetches
# and starts a real Kafka broker with Maven if none answers, and stops it afterwards).
# Arguments go to `evc demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${EVC_VENV:-.venv}
if [ ! -x "$VENV/bin/evc" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e .
fi
exec "$VENV/bin/evc" demo "$@"

#!/usr/bin/env bash
# The project's demo command: creates its own virtual environment (.venv) on a fresh clone,
# installs the package at the tested versions (constraints.txt), and runs `qwen2vl-jax demo`:
# trains a small VLM to read on CPU (no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e .
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec .venv/bin/qwen2vl-jax demo "$@"

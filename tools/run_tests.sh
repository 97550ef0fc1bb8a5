#!/usr/bin/env bash
# The project's test command: creates its own virtual environment (.venv) on a fresh clone,
# installs the package with the [test,parity,video,tpu-aot] extras at the tested versions
# (constraints.txt), and runs pytest on CPU (the default run excludes `slow`; `-m slow` selects them).
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -k parity -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# torch==2.13.0 comes from the machine's local wheel store (pip's find-links); pinning it first
# keeps pip from resolving a CUDA build.
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# tpu-aot: libtpu for the ahead-of-time TPU compilation tests (tpu_aot), no TPU needed.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test,parity,video,tpu-aot]"
export JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# Install on a GPU node (CUDA 12 driver): a virtual environment with jax[cuda12] and this package.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m venv .venv
.venv/bin/pip install -q -U pip
.venv/bin/pip install -q -c constraints.txt -e '.[cuda]'
.venv/bin/python -c 'import jax; print(jax.device_count(), jax.devices()[0].device_kind)'

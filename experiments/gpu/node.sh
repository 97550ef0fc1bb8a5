#!/usr/bin/env bash
# One multi-GPU node, one process driving all its GPUs:
#   bash experiments/gpu/node.sh RECIPE.yaml [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/qwen2vl_jax/jax-cache}"
# XLA:GPU: let the allocator take most of the memory up front (JAX's default is 75 %).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
exec .venv/bin/qwen2vl-jax train "$@"

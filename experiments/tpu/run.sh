#!/usr/bin/env bash
# Start the same training command on every worker of the slice:
#   bash experiments/tpu/run.sh RECIPE.yaml [key=value ...]
# Checkpoints go straight to the bucket; the run directory is copied there when the run ends.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
recipe="${1:?usage: run.sh RECIPE.yaml [key=value ...]}"; shift
name="$(basename "$recipe" .yaml)"
overrides="$*"
cmd="cd $REMOTE_DIR && export JAX_COMPILATION_CACHE_DIR=$BUCKET/jax-cache && \
  .venv/bin/qwen2vl-jax train $recipe output_dir=runs checkpoint_dir=$BUCKET/runs/$name/checkpoints $overrides; \
  rc=\$?; gcloud storage rsync -r runs/$name $BUCKET/runs/$name/run_dir_\$(hostname) >/dev/null; exit \$rc"
on_all_workers "$cmd"

#!/usr/bin/env bash
# Put this repository on every worker of the slice and install it with the TPU extra.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
if [[ -n "$REPO_URL" ]]; then
  on_all_workers "rm -rf $REMOTE_DIR && git clone --depth 1 $REPO_URL $REMOTE_DIR"
else
  root="$(cd "$(dirname "$0")/../.." && pwd)"
  tarball="$(mktemp -d)/qwen2vl_jax.tar.gz"
  git -C "$root" archive --format=tar.gz -o "$tarball" HEAD
  gcloud compute tpus tpu-vm scp "$tarball" "$TPU:~/qwen2vl_jax.tar.gz" --project="$PROJECT" --zone="$ZONE" --worker=all
  on_all_workers "rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf qwen2vl_jax.tar.gz -C $REMOTE_DIR"
fi
on_all_workers "cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip && \
  .venv/bin/pip install -q -c constraints.txt -e '.[tpu]' && \
  .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"

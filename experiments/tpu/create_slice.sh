#!/usr/bin/env bash
# Create a TPU VM slice: bash experiments/tpu/create_slice.sh  (SPOT=1 for spot capacity)
set -euo pipefail
source "$(dirname "$0")/_env.sh"
extra=()
[[ "${SPOT:-0}" == 1 ]] && extra+=(--spot)
gcloud compute tpus tpu-vm create "$TPU" --project="$PROJECT" --zone="$ZONE" \
  --accelerator-type="$ACCEL" --version="$RUNTIME" "${extra[@]}"
gcloud compute tpus tpu-vm describe "$TPU" --project="$PROJECT" --zone="$ZONE" --format="value(state)"

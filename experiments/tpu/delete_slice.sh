#!/usr/bin/env bash
# Delete the slice (checkpoints and logs stay in the bucket).
set -euo pipefail
source "$(dirname "$0")/_env.sh"
gcloud compute tpus tpu-vm delete "$TPU" --project="$PROJECT" --zone="$ZONE" --quiet

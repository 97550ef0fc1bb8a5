# Shared settings of the TPU scripts; every variable can be set in the environment first.
: "${PROJECT:?set PROJECT to your Google Cloud project}"
: "${ZONE:?set ZONE, e.g. us-east5-a (v5p) or us-west4-a (v5e)}"
: "${TPU:?set TPU to the slice name, e.g. qwen-v5p-32}"
: "${ACCEL:?set ACCEL to the accelerator type, e.g. v5p-32 or v5litepod-16}"
: "${BUCKET:?set BUCKET to a gs:// bucket for checkpoints, logs and the compilation cache}"
REPO_URL="${REPO_URL:-}"          # a git URL to clone on the workers; empty: copy this checkout
REMOTE_DIR="${REMOTE_DIR:-qwen2vl_jax}"
case "$ACCEL" in
  v5litepod-*|v5e-*) RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}" ;;
  v5p-*) RUNTIME="${RUNTIME:-v2-alpha-tpuv5}" ;;
  v4-*) RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}" ;;
  *) RUNTIME="${RUNTIME:?set RUNTIME, the TPU VM software version for $ACCEL}" ;;
esac
on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU" --project="$PROJECT" --zone="$ZONE" --worker=all --command="$1"
}

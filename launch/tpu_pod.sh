#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: create (or reuse) the TPU VM, install xpsr_jax on every worker, run the same
# command on all of them (jax.distributed.initialize() auto-detects the coordinator on TPU), collect the logs.
#
#   TPU_NAME=xpsr-v5p-64 ZONE=us-east5-a ACCELERATOR=v5p-64 RUNTIME=v2-alpha-tpuv5 \
#   REPO=https://example.org/xpsr_jax.git WORKDIR=gs://my-bucket/runs/xpsr \
#   bash launch/tpu_pod.sh --config xpsr_sd15 --config.init_from=gs://my-bucket/weights/xpsr-init \
#        --config.data.path=gs://my-bucket/data/train --config.mesh.shape='(("data",-1),("fsdp",8))'
# WORKDIR, init_from and data.path may be gs:// URLs: every worker reads and writes the bucket itself (orbax through
# TensorStore, the rest through gcsfs) with the VM's service account, so checkpoints written by all workers are
# read by all after a restart. Optional: DATA_BUCKET=my-bucket mounts gs://DATA_BUCKET read-only at MOUNT (default
# /mnt/gcs) with gcsfuse on every worker, for data read through the mount's metadata cache (then
# --config.data.path=/mnt/gcs/...).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${ACCELERATOR:=v5p-8}" "${RUNTIME:=v2-alpha-tpuv5}"
: "${REPO:?set REPO (git URL of this project)}" "${WORKDIR:?set WORKDIR (gs://BUCKET/... or a shared filesystem)}"
: "${BRANCH:=main}" "${LOGS:=runs/tpu-logs/$TPU_NAME}"

if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" >/dev/null 2>&1; then
  echo "creating $TPU_NAME ($ACCELERATOR) in $ZONE"
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
fi

on_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"; }

echo "installing on every worker"
on_all "set -e; [ -d xpsr_jax ] || git clone -b $BRANCH $REPO xpsr_jax; cd xpsr_jax && git fetch -q && git checkout -q $BRANCH && git pull -q;
  python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && .venv/bin/pip install -q 'jax[tpu]==$(grep '^jax==' requirements.txt | cut -d= -f3)' && .venv/bin/pip install -q --no-deps -e ."

if [ -n "${DATA_BUCKET:-}" ]; then
  : "${MOUNT:=/mnt/gcs}"
  echo "mounting gs://$DATA_BUCKET read-only at $MOUNT on every worker (data only; runs write to gs:// directly)"
  on_all "set -e; sudo mkdir -p $MOUNT && sudo chown \$(id -u):\$(id -g) $MOUNT;
    mountpoint -q $MOUNT || gcsfuse -o ro --implicit-dirs $DATA_BUCKET $MOUNT"
fi

args=$(printf ' %q' "$@")
echo "training on every worker"
on_all "cd xpsr_jax && .venv/bin/xpsr-jax train --distributed --workdir $WORKDIR $args 2>&1 | tee train-\$(hostname).log"

mkdir -p "$LOGS"
gcloud compute tpus tpu-vm scp "$TPU_NAME:xpsr_jax/train-*.log" "$LOGS/" --zone "$ZONE" --worker=all || true
echo "logs in $LOGS"

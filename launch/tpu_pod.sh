#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: create (or reuse) the TPU VM, install xpsr_jax on every worker, run the same
# command on all of them (jax.distributed.initialize() auto-detects the coordinator on TPU), collect the logs.
#
#   TPU_NAME=xpsr-v5p-64 ZONE=us-east5-a ACCELERATOR=v5p-64 RUNTIME=v2-alpha-tpuv5 \
#   REPO=https://example.org/xpsr_jax.git BUCKET=my-bucket WORKDIR=/mnt/gcs/runs/xpsr \
#   bash launch/tpu_pod.sh --config xpsr_sd15 --config.init_from=/mnt/gcs/weights/xpsr-init \
#        --config.data.path=/mnt/gcs/data/train --config.mesh.shape='(("data",-1),("fsdp",8))'
# Paths are files, not URLs: with BUCKET set, every worker mounts gs://BUCKET at MOUNT (default /mnt/gcs) with
# gcsfuse first, so that checkpoints written by one worker are read by all after a restart.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${ACCELERATOR:=v5p-8}" "${RUNTIME:=v2-alpha-tpuv5}"
: "${REPO:?set REPO (git URL of this project)}" "${WORKDIR:?set WORKDIR (a shared filesystem or the bucket mount)}"
: "${BRANCH:=main}" "${LOGS:=runs/tpu-logs/$TPU_NAME}"

if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" >/dev/null 2>&1; then
  echo "creating $TPU_NAME ($ACCELERATOR) in $ZONE"
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
fi

on_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"; }

echo "installing on every worker"
on_all "set -e; [ -d xpsr_jax ] || git clone -b $BRANCH $REPO xpsr_jax; cd xpsr_jax && git fetch -q && git checkout -q $BRANCH && git pull -q;
  python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && .venv/bin/pip install -q 'jax[tpu]==$(grep '^jax==' requirements.txt | cut -d= -f3)' && .venv/bin/pip install -q --no-deps -e ."

if [ -n "${BUCKET:-}" ]; then
  : "${MOUNT:=/mnt/gcs}"
  echo "mounting gs://$BUCKET at $MOUNT on every worker"
  on_all "set -e; sudo mkdir -p $MOUNT && sudo chown \$(id -u):\$(id -g) $MOUNT;
    mountpoint -q $MOUNT || gcsfuse --implicit-dirs $BUCKET $MOUNT"
fi

args=$(printf ' %q' "$@")
echo "training on every worker"
on_all "cd xpsr_jax && .venv/bin/xpsr-jax train --distributed --workdir $WORKDIR $args 2>&1 | tee train-\$(hostname).log"

mkdir -p "$LOGS"
gcloud compute tpus tpu-vm scp "$TPU_NAME:xpsr_jax/train-*.log" "$LOGS/" --zone "$ZONE" --worker=all || true
echo "logs in $LOGS"

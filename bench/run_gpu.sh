#!/usr/bin/env bash
# The GPU benchmark set at SD1.5 size (random weights, bf16), one GPU, in priority order; each script's JSON lines
# and log go to OUT (default: bench-results/) as they come, so a run cut short keeps what it measured.
#   1. the training step, JAX vs the torch_ref PyTorch step in the same process (issue targets: >= 3x, MFU)
#   2. super-resolution of a 128^2 LR to 512^2, 20 DDPM steps with CFG, JAX vs the torch_ref pipeline (>= 5x)
# usage: bash bench/run_gpu.sh [OUT] [TRAIN_BATCH]
set -u
out=${1:-bench-results}
batch=${2:-8}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the card within one process: grow JAX's pool on demand instead of taking 75 % up front
export XLA_PYTHON_CLIENT_PREALLOCATE=false
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/gpu.csv" 2>&1 || true
"$py" -c "import jax, torch; print(jax.__version__, jax.devices(), torch.__version__)" > "$out/versions.txt" 2>&1
status=0
"$py" "$here/bench_train.py" --config xpsr_sd15 --batch "$batch" --compare-torch \
    --iters 10 --warmup 2 > "$out/train.jsonl" 2> "$out/train.log" || status=1
"$py" "$here/bench_sr.py" --model sd15 --dtype bfloat16 --batches 1 8 --repeats 2 \
    > "$out/sr.jsonl" 2> "$out/sr.log" || status=1
cat "$out"/*.jsonl
exit $status

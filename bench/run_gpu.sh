#!/usr/bin/env bash
# The GPU benchmark set at SD1.5 size (random weights, bf16), one GPU, in priority order; each script's JSON lines
# and log go to OUT (default: bench-results/) as they come, so a run cut short keeps what it measured.
#   1. the train step at batch 8 and 16, JAX vs the torch_ref PyTorch step in the same process, both running the
#      frozen VAE encoder and CLIP text encoder in the step (the official training)
#   2. the same with both sides reading cached encoder outputs (make-data --cache-latents; random stand-ins here)
#   3. super-resolution of a 128^2 LR to 512^2, 20 DDPM steps with CFG, JAX batch 1 and 8 vs the torch_ref pipeline,
#      and the compiled memory of each of its programs (text encoder, VAE encoder, denoise loop, VAE decoder)
#   4. the cold start of the train step at batch 8: an empty persistent compilation cache, then a warm one
# Then bench/gpu_summary.py prints the ratios (issue targets: train >= 3x torch_ref at batch 16 and >= 45 % MFU,
# peak memory no higher than PyTorch's, cold start <= 60 s with an empty cache; SR >= 5x at batch 1).
# usage: bash bench/run_gpu.sh [OUT] [CONFIG]     (CONFIG: xpsr_sd15; tiny runs the same chain on a CPU in minutes)
set -u
out=${1:-bench-results}
config=${2:-xpsr_sd15}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the card within one process: grow JAX's pool on demand instead of taking 75 % up front
export XLA_PYTHON_CLIENT_PREALLOCATE=false
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
if [ "$config" = tiny ]; then batches="2 4"; sr_model=tiny; sr_dtype=float32; else batches="8 16"; sr_model=sd15; sr_dtype=bfloat16; fi
cached="--set loss.latents=precomputed --set loss.text=precomputed"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/gpu.csv" 2>&1 || true
"$py" -c "import jax, torch; print(jax.__version__, jax.devices(), torch.__version__)" > "$out/versions.txt" 2>&1
status=0
# shellcheck disable=SC2086
"$py" "$here/bench_train.py" --config "$config" --batch $batches --compare-torch --iters 10 --warmup 2 \
    > "$out/train.jsonl" 2> "$out/train.log" || status=1
# shellcheck disable=SC2086
"$py" "$here/bench_train.py" --config "$config" --batch $batches --compare-torch --iters 10 --warmup 2 $cached \
    > "$out/train-cached.jsonl" 2> "$out/train-cached.log" || status=1
"$py" "$here/bench_sr.py" --model "$sr_model" --dtype "$sr_dtype" --batches 1 8 --repeats 2 \
    > "$out/sr.jsonl" 2> "$out/sr.log" || status=1
# each SR program's compiled memory at batch 1 and 8 (SD1.5 shapes; the tiny run at 128 px)
sr_px=512; [ "$config" = tiny ] && sr_px=128
"$py" "$here/sr_memory.py" --batches 1 8 --dtypes "$sr_dtype" --process-size $sr_px \
    > "$out/sr-memory.jsonl" 2> "$out/sr-memory.log" || status=1
cache=$(mktemp -d)
"$py" "$here/bench_train.py" --config "$config" --batch ${batches%% *} --cache "$cache" --cold-starts 2 --iters 2 \
    > "$out/cold-start.jsonl" 2> "$out/cold-start.log" || status=1
rm -rf "$cache"
"$py" "$here/gpu_summary.py" "$out"/*.jsonl | tee "$out/summary.txt" || status=1
exit $status

"""Memory of the SD1.5 train step on one GPU, compiled (not run), also for a GPU this host does not have.

    python bench/train_memory.py --target h200 --batches 8 16            # needs the CUDA plugin: bench/gpu_target.py
    python bench/train_memory.py --target h200 --batches 16 --cached     # from cached encoder outputs

One JSON line per batch: the compiler's memory analysis of the real step (``plan_state`` + ``lower_step``, the
state donated), the attention kernels it got and the compile seconds. The trainer logs the same analysis on a
GPU (``program_memory_bytes`` in ``h200-2026-11-26.jsonl``), so a line here can be checked against a run there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(config_name: str, batch: int, cached: bool, devices) -> dict:
    from xpsr_jax.nn import attention
    from xpsr_jax.train import partition
    from xpsr_jax.train.cli import load_config
    from xpsr_jax.train.trainer import lower_step, plan_state

    overrides = [f"--config.global_batch_size={batch}"]
    if cached:
        overrides += ["--config.loss.latents=precomputed", "--config.loss.text=precomputed"]
    config = load_config(config_name, overrides)
    mesh = partition.make_mesh(tuple(tuple(a) for a in config.mesh.shape), devices)
    t0 = time.perf_counter()
    with attention.recording() as log:
        lowered = lower_step(config, plan_state(config, mesh))
    t1 = time.perf_counter()
    m = lowered.compile().memory_analysis()
    kernels: dict[str, int] = {}
    for c in log:
        kernels[c.impl] = kernels.get(c.impl, 0) + 1
    peak = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    gib = lambda b: round(b / 2**30, 2)  # noqa: E731
    return {"what": "train_step_memory", "config": config_name, "batch": batch, "cached_encoders": cached,
            "lower_s": round(t1 - t0, 1), "compile_s": round(time.perf_counter() - t1, 1), "attention": kernels,
            "argument_gib": gib(m.argument_size_in_bytes), "temp_gib": gib(m.temp_size_in_bytes),
            "output_gib": gib(m.output_size_in_bytes), "alias_gib": gib(m.alias_size_in_bytes),
            "program_memory_bytes": peak, "peak_gib": gib(peak)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="xpsr_sd15")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    p.add_argument("--cached", action="store_true", help="the step from cached VAE latents and text embeddings")
    p.add_argument("--target", choices=("h200",), help="compile for this GPU (bench/gpu_target.py)")
    args = p.parse_args()
    if args.target:
        import gpu_target

        gpu_target.prepare_environment()
        devices = list(gpu_target.mesh(args.target).devices.flat)
    import jax

    if not args.target:
        devices = jax.devices()[:1]
    facts = {"device": devices[0].device_kind, "jax": jax.__version__}
    if args.target:
        facts |= {"compiled_on": "a host without the GPU (XLA deviceless compile)", "xla_flags": os.environ["XLA_FLAGS"]}
    for batch in args.batches:
        print(json.dumps(measure(args.config, batch, args.cached, devices) | facts), flush=True)


if __name__ == "__main__":
    main()

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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(config_name: str, batch: int, cached: bool, devices) -> dict:
    from xpsr_jax.train import partition
    from xpsr_jax.train.cli import load_config
    from xpsr_jax.train.plan import ChipMemory, count_attention_kernels, kernel_totals
    from xpsr_jax.train.trainer import lower_step, plan_state

    overrides = [f"--config.global_batch_size={batch}"]
    if cached:
        overrides += ["--config.loss.latents=precomputed", "--config.loss.text=precomputed"]
    config = load_config(config_name, overrides)
    mesh = partition.make_mesh(tuple(tuple(a) for a in config.mesh.shape), devices)
    t0 = time.perf_counter()
    with count_attention_kernels() as kernels:
        lowered = lower_step(config, plan_state(config, mesh))
    t1 = time.perf_counter()
    m = ChipMemory.from_compiled(lowered.compile())
    gib = lambda b: round(b / 2**30, 2)  # noqa: E731
    return {"what": "train_step_memory", "config": config_name, "batch": batch, "cached_encoders": cached,
            "lower_s": round(t1 - t0, 1), "compile_s": round(time.perf_counter() - t1, 1),
            "attention": kernel_totals(kernels), "argument_gib": gib(m.arguments), "temp_gib": gib(m.temporaries),
            "output_gib": gib(m.outputs), "alias_gib": gib(m.aliased), "program_memory_bytes": m.peak,
            "peak_gib": gib(m.peak)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="xpsr_sd15")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    p.add_argument("--cached", action="store_true", help="the step from cached VAE latents and text embeddings")
    p.add_argument("--target", choices=("h200",), help="compile for this GPU (bench/gpu_target.py)")
    args = p.parse_args()
    mesh = None
    if args.target:
        import gpu_target

        gpu_target.prepare_environment()
        mesh = gpu_target.mesh(args.target)
    import jax

    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
    facts = {"device": devices[0].device_kind, "jax": jax.__version__} | (gpu_target.facts(mesh) if mesh is not None else {})
    for batch in args.batches:
        print(json.dumps(measure(args.config, batch, args.cached, devices) | facts), flush=True)


if __name__ == "__main__":
    main()

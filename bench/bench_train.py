"""Training speed: the whole train step as ``create_trainer`` builds it (VAE encode, text encoder, ControlNet +
UNet forward/backward, DFC loss, AdamW, clipping), one JSON line per global batch size.

    python bench/bench_train.py                                            # CPU: xpsr_jax/configs/tiny.py
    python bench/bench_train.py --config xpsr_sd15 --batch 8 16  # GPU: the paper's model, 512 px
    python bench/bench_train.py --config xpsr_sd15 --batch 16 --remat
    python bench/bench_train.py --config xpsr_sd15 --cache /tmp/xla-cache --cold-starts 2
    python bench/bench_train.py --config xpsr_sd15 --batch 8 16 --compare-torch   # + torch_ref step
    python bench/bench_train.py --config xpsr_sd15 --batch 8 16 --compare-torch \
        --set loss.latents=precomputed --set loss.text=precomputed   # both from cached encoder outputs

Lines: {"what": "train_step", "impl": "jax", "device", "config", "batch", "dtype", "seconds" (median step),
"images_per_s", "flops_per_image", "flops_per_step", "tflops_per_s", "mfu", "peak_memory_bytes",
"program_memory_bytes", "compile_s" (the trainer's AOT compile, as it logs it), "create_trainer_s" (planning +
compile), "params_host_s" (fresh parameters on the host), "state_s" (``state_from_params``: the sharded state,
its own jit included), "first_step_s", "cold_start_s" (from the start of main to the first step's result), "loss",
"anchor_images_per_s", "speedup_vs_anchor", "null_reasons"}.

Anchors (official PyTorch on one H100, bf16 autocast): 26.0 img/s at batch 8 (34.9 GiB), 35.0 at batch 16
(54.0 GiB); printed beside SD1.5-size runs at 512 px. ``flops_per_step_compiled`` is the trainer's count (XLA's
cost analysis of the compiled step). On a GPU that count misses the cuBLAS/cuDNN custom calls, on several devices
it is per device, and with --remat it includes recomputation; there MFU uses the step lowered (not compiled) for
one CPU device with XLA attention and no remat instead (``flops_source`` says which). The data are synthetic and
made before timing (bench_data.py measures the input pipeline).

``--cache DIR`` turns on JAX's persistent compilation cache; ``--cold-starts N`` runs N fresh processes in a row
against it, so the first line is a cold cache and the later ones a warm cache.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

MAIN_T0 = time.perf_counter()

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ANCHORS = {8: (26.0, 34.9), 16: (35.0, 54.0)}  # batch -> (official img/s, peak GiB), SD1.5 512 px on an H100
CHILD_ENV = "XPSR_BENCH_COLD_START"
# On a CPU the tiny step with 2 layers per block compiles for minutes; 1 layer keeps every kind of block (as the
# training tests do) and the default run within a few minutes on 2 cores.
CPU_TINY_SET = ("model.unet.layers_per_block=1",)
CPU_TINY_BATCH = 2
DEFAULT_CONFIG = common.ROOT / "xpsr_jax" / "configs" / "tiny.py"


def load_config(path: str):
    from xpsr_jax.configs import resolve

    spec = importlib.util.spec_from_file_location("bench_run_config", resolve(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def configure(args, batch: int):
    c = load_config(args.config)
    for item in args.set:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = c
        for name in parents:
            node = node[name]
        node[leaf] = _literal(value)
    c.global_batch_size = batch
    if args.remat:
        c.model.remat = True
    if args.attention:
        c.model.attention_impl = args.attention
    if args.grad_accum:
        c.optim.grad_accum_steps = args.grad_accum
    return c


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as xla or bfloat16


def is_sd15_512(c) -> bool:
    return not dict(c.model.unet) and c.data.resolution == 512


def device_batch(trainer, config, seed: int):
    """One synthetic global batch on the devices, made before timing."""
    import jax
    import numpy as np

    from xpsr_jax.train.synthetic import SyntheticIterator

    local = next(SyntheticIterator(config.global_batch_size // jax.process_count(), config.data.resolution, seed))
    from xpsr_jax.train.trainer import batch_spec

    rng = np.random.default_rng(seed)
    for key, spec in batch_spec(config).items():  # cached encoder outputs: random stand-ins, stored shape and dtype
        if key not in local:
            local[key] = rng.standard_normal((len(local["hr"]), *spec.shape[1:])).astype(spec.dtype)
    try:
        from xpsr_jax.train.loop import global_batch
    except ImportError:  # the loop needs grain and orbax for checkpoints; the step itself does not
        return {k: jax.make_array_from_process_local_data(s, np.asarray(local[k]))
                for k, s in trainer.batch_shardings.items()}
    return global_batch(trainer, local)


def lower_for_count(config):
    """The step lowered (not compiled) for one CPU device with XLA attention and without remat (see
    ``common.flop_counts``): the whole batch's dots and convolutions, no recomputation."""
    import functools

    import flax.linen as nn
    import jax

    from xpsr_jax.train.partition import make_mesh
    from xpsr_jax.train.step import train_step
    from xpsr_jax.train.trainer import batch_spec, plan_state

    c = copy.deepcopy(config)
    c.model.attention_impl, c.model.remat = "xla", False
    c.mesh.shape = tuple((name, 1) for name, _ in c.mesh.shape)  # same axis names, one device
    mesh = make_mesh(c.mesh.shape, jax.devices("cpu")[:1])
    plan = plan_state(c, mesh)
    step = jax.jit(functools.partial(train_step, nets=plan.nets, config=c, tx=plan.tx))
    with jax.set_mesh(mesh), nn.logical_axis_rules(plan.rules):  # as the trainer lowers it
        return step.lower(plan.abstract_state, common.on_cpu(batch_spec(c)))


def bench_one(args, batch: int, cold_start: int | None, first_in_process: bool = True) -> None:
    import jax

    from xpsr_jax.train.partition import make_mesh
    from xpsr_jax.train.trainer import create_trainer

    config = configure(args, batch)
    mesh = make_mesh(tuple(tuple(a) for a in config.mesh.shape))
    dev = common.device_facts()
    peak, peak_reason = common.peak_tflops(args.peak_tflops or config.device_peak_tflops)
    t0 = time.perf_counter()
    try:
        trainer = create_trainer(config, mesh)
    except Exception as e:  # noqa: BLE001 - e.g. out of memory at SD1.5 size; say so and go on to the next batch
        common.emit(common.skipped("train_step", "jax", Path(args.config).stem, batch,
                                   f"create_trainer failed: {type(e).__name__}: {str(e)[:300]}", **dev))
        return
    create_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    params = trainer.nets.fresh_params(config.seed)
    params_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = common.block(trainer.state_from_params(params, jax.random.key(config.seed)))
    state_s = time.perf_counter() - t0
    del params
    data = device_batch(trainer, config, config.seed)

    t0 = time.perf_counter()
    state, metrics = common.block(trainer.step(state, data))
    first_step_s = time.perf_counter() - t0
    cold_start_s = time.perf_counter() - MAIN_T0 if first_in_process else None

    holder = {"state": state}

    def call():
        holder["state"], m = trainer.step(holder["state"], data)  # the state is donated: carry it forward
        return holder["state"], m

    times = common.time_calls(call, common.block, args.warmup, args.iters)
    loss = float(jax.device_get(trainer.step(holder["state"], data)[1]["loss"]))
    peak_bytes, peak_mem_reason = common.jax_peak_bytes()
    mem, mem_reason = common.program_bytes(trainer.step)

    flops, flops_reason, extra = common.flop_counts(
        trainer.step, lambda: lower_for_count(config),
        recount=dev["backend"] != "cpu" or jax.device_count() > 1 or bool(config.model.remat))
    impl = config.model.attention_impl
    rec = common.record(
        what="train_step", impl="jax", device=dev, config=Path(args.config).stem, batch=batch,
        dtype=config.compute_dtype, times=times, flops_per_call=flops, compile_s=trainer.compile_seconds,
        peak_tflops_value=peak, peak_bytes=peak_bytes, devices=jax.device_count(),
        reasons={"flops_per_image": flops_reason, "peak_tflops": peak_reason, "peak_memory_bytes": peak_mem_reason,
                 "program_memory_bytes": mem_reason,
                 "cold_start_s": None if first_in_process else "not the first measurement of this process"},
        flops_per_step=flops, flops_per_step_compiled=trainer.flops_per_step, **extra,
        attention=impl, remat=bool(config.model.remat), grad_accum=config.optim.grad_accum_steps,
        frozen_dtype=config.optim.frozen_dtype, resolution=config.data.resolution, latents=config.loss.latents,
        encoders="cached" if cached_encoders(config) else "in_step",
        overrides=list(args.set), mesh=dict(mesh.shape), program_memory_bytes=mem,
        create_trainer_s=round(create_s, 3), params_host_s=round(params_s, 3), state_s=round(state_s, 3),
        first_step_s=round(first_step_s, 3),
        cold_start_s=cold_start_s and round(cold_start_s, 3), loss=loss)
    rec.update(anchor_fields(config, batch, rec["images_per_s"]))
    if cold_start is not None:
        rec.update(cold_start=cold_start, cache_dir=args.cache, cache_files_before=args.cache_files_before)
    common.emit(rec)
    del state, holder, trainer


def cached_encoders(config) -> bool:
    """Whether the step reads the VAE posterior and the prompt embeddings from the data (make-data
    --cache-latents) instead of running the frozen encoders."""
    return config.loss.latents == "precomputed" and config.loss.text == "precomputed"


def anchor_fields(config, batch: int, img_s: float) -> dict:
    if is_sd15_512(config) and batch in ANCHORS:
        ref, gib = ANCHORS[batch]
        return {"anchor_images_per_s": ref, "anchor_peak_memory_gib": gib,
                "speedup_vs_anchor": round(img_s / ref, 3), "anchor": "official PyTorch, one H100, bf16 autocast"}
    return {"anchor_images_per_s": None, "speedup_vs_anchor": None}


def enable_cache(args) -> None:
    import jax

    Path(args.cache).mkdir(parents=True, exist_ok=True)
    args.cache_files_before = sum(1 for p in Path(args.cache).rglob("*") if p.is_file())
    jax.config.update("jax_compilation_cache_dir", args.cache)
    # Cache every executable: the tiny step compiles in seconds and would otherwise be skipped.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="a bundled config's name or a config file (default: tiny)")
    p.add_argument("--batch", type=int, nargs="+",
                   help=f"global batch sizes (default: the config's; {CPU_TINY_BATCH} on CPU with the tiny config)")
    p.add_argument("--remat", action="store_true", help="recompute blocks in the backward pass")
    p.add_argument("--attention", choices=("auto", "xla", "cudnn"), help="override config.model.attention_impl")
    p.add_argument("--grad-accum", type=int, help="override config.optim.grad_accum_steps")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.unet.layers_per_block=1 (repeatable); default on "
                        f"CPU with the tiny config: {' '.join(CPU_TINY_SET)}")
    p.add_argument("--cache", help="persistent compilation cache folder")
    p.add_argument("--cold-starts", type=int, default=1,
                   help="with --cache: run this many fresh processes one after another (first vs later start)")
    p.add_argument("--compare-torch", action="store_true",
                   help="also time the torch_ref PyTorch train step (ControlNet + UNet forward/backward, DFC loss, "
                        "clipping, AdamW; latents and text embeddings given, as the official anchors) in this run")
    common.add_common_args(p, iters=3, warmup=1)
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.cold_starts > 1:
        if not args.cache:
            raise SystemExit("--cold-starts needs --cache DIR")
        # Each start must be a new process: the in-memory cache of this one would hide the compile.
        rc = 0
        for i in range(1, args.cold_starts + 1):
            env = dict(os.environ, **{CHILD_ENV: str(i)})
            child = [sys.executable, str(Path(__file__).resolve()), *argv, "--cold-starts", "1"]
            rc = rc or subprocess.run(child, env=env).returncode
        return rc
    cold_start = int(os.environ[CHILD_ENV]) if CHILD_ENV in os.environ else None
    if args.cache:
        enable_cache(args)
        cold_start = cold_start or 1
    import jax

    from xpsr_jax.configs import resolve

    cpu_tiny = jax.default_backend() == "cpu" and resolve(args.config) == DEFAULT_CONFIG
    if args.set is None:
        args.set = list(CPU_TINY_SET) if cpu_tiny else []
    default_batch = max(CPU_TINY_BATCH, jax.device_count()) if cpu_tiny else load_config(args.config).global_batch_size
    batches = args.batch or [default_batch]
    for i, batch in enumerate(batches):
        bench_one(args, batch, cold_start, first_in_process=i == 0)
    if args.compare_torch:
        import bench_denoiser

        config = configure(args, batches[0])
        size = "sd15" if is_sd15_512(config) else "tiny"
        dtype = "float32" if cpu_tiny else config.compute_dtype
        mode = "step_cached" if cached_encoders(config) else "step"
        bench_denoiser.main(["--size", size, "--modes", mode, "--torch", "--no-jax", "--dtype", dtype,
                             "--train-batch", *map(str, batches), "--iters", str(args.iters),
                             "--warmup", str(args.warmup)])
    return 0


if __name__ == "__main__":
    sys.exit(main())

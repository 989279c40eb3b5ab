"""UNet speed: the SD1.5 UNet (no XPSR additions) forward and forward+backward, JAX beside diffusers' PyTorch
UNet2DConditionModel, one JSON line per measurement.

    python bench/bench_unet.py                          # CPU: tiny UNet, 16x16 latents, batch 2, fp32
    python bench/bench_unet.py --size sd15 --torch      # GPU: 64x64 latents, batch 8 and 16, bf16, vs PyTorch
    python bench/bench_unet.py --size sd15 --attention auto xla --modes fwd_bwd --batch 16

Lines: {"what": "unet_fwd" | "unet_fwd_bwd", "impl": "jax" | "torch", "device", "config", "batch", "dtype",
"attention", "seconds" (median of --iters after --warmup), "images_per_s", "flops_per_image", "tflops_per_s",
"mfu", "peak_memory_bytes", "program_memory_bytes", "compile_s", "null_reasons"}.

forward+backward is the gradient of mean(eps^2) w.r.t. every UNet parameter (fp32 master weights, compute in
--dtype): a full fine-tune step without the optimizer. PyTorch runs fp32 weights under autocast to --dtype.
FLOPs come from XLA's cost analysis: of the compiled call on a CPU; elsewhere of the same call lowered (not
compiled) for one CPU device with XLA attention, because on a GPU the compiled count misses the cuBLAS/cuDNN custom
calls (both are printed, ``flops_source`` says which MFU uses). XLA counts elementwise work too; PyTorch's
FlopCounterMode counts matmuls and convolutions only. The allocator peak (GPU only) is the process's so far: JAX
cannot reset it, so for a clean figure run one --batch/--modes per process; ``program_memory_bytes`` (XLA's plan
for one call) is per measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODES = ("fwd", "fwd_bwd")


def model_config(size: str):
    from xpsr_jax.models.config import UNetConfig
    from xpsr_jax.testing import unet_config as tiny_config

    # The stock UNet: pixel attentions need ControlNet residuals, which bench_denoiser.py covers.
    if size == "sd15":
        return UNetConfig(pixel_attention=False), 64
    return tiny_config(pixel_attention=False), 16


def make_inputs(cfg, batch: int, latent: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "sample": rng.standard_normal((batch, latent, latent, cfg.in_channels), np.float32),
        "timesteps": rng.integers(0, 1000, (batch,)).astype(np.float32),
        "context": rng.standard_normal((batch, 77, cfg.cross_attention_dim), np.float32),
    }


def jax_fn(cfg, impl: str, dtype, mode: str):
    import jax
    import jax.numpy as jnp

    from xpsr_jax.models.unet import UNet

    unet = UNet(cfg, impl, dtype)

    def fwd(params, sample, timesteps, context):
        return unet.apply({"params": params}, sample, timesteps, context)

    def fwd_bwd(params, sample, timesteps, context):
        def loss(p):
            return jnp.mean(jnp.square(fwd(p, sample, timesteps, context).astype(jnp.float32)))

        return jax.value_and_grad(loss)(params)

    return jax.jit(fwd if mode == "fwd" else fwd_bwd)


def bench_jax(args, cfg, latent: int) -> None:
    import jax
    import jax.numpy as jnp

    from xpsr_jax.models.unet import UNet

    dev = common.device_facts()
    peak, peak_reason = common.peak_tflops(args.peak_tflops)
    dtype = common.dtype_of(args.dtype)
    x1 = make_inputs(cfg, 1, latent, 0)
    t0 = time.perf_counter()
    params = common.fresh_module_params(UNet(cfg, "xla"), args.seed, x1["sample"], x1["timesteps"], x1["context"])
    params = jax.device_put(jax.tree.map(lambda a: a.astype(args.param_dtype), params))
    params_s = time.perf_counter() - t0
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    for impl in args.attention:
        for batch in args.batch:
            inputs = [jnp.asarray(v) for v in make_inputs(cfg, batch, latent, args.seed).values()]
            for mode in args.modes:
                compiled, compile_s = common.aot_compile(jax_fn(cfg, impl, dtype, mode), params, *inputs)
                flops, flops_reason, extra = common.flop_counts(
                    compiled, lambda: jax_fn(cfg, "xla", dtype, mode).lower(*common.on_cpu((params, *inputs))),
                    recount=dev["backend"] != "cpu")
                mem, mem_reason = common.program_bytes(compiled)
                times = common.time_calls(lambda: compiled(params, *inputs), common.block, args.warmup, args.iters)
                peak_bytes, peak_mem_reason = common.jax_peak_bytes()
                common.emit(common.record(
                    what=f"unet_{mode}", impl="jax", device=dev, config=args.size, batch=batch, dtype=args.dtype,
                    times=times, flops_per_call=flops, compile_s=compile_s, peak_tflops_value=peak,
                    peak_bytes=peak_bytes, attention=impl, latent=latent, param_dtype=args.param_dtype,
                    parameters=n_params, params_host_s=round(params_s, 3), program_memory_bytes=mem, **extra,
                    reasons={"flops_per_image": flops_reason, "peak_tflops": peak_reason,
                             "peak_memory_bytes": peak_mem_reason, "program_memory_bytes": mem_reason}))


def bench_torch(args, cfg, latent: int) -> None:
    env = common.TorchEnv(args.dtype, allow_cpu=True)
    if env.torch is None:
        for batch in args.batch:
            common.emit(common.skipped("unet", "torch", args.size, batch, env.reason))
        return
    try:
        from diffusers import UNet2DConditionModel

        from xpsr_jax.torch_ref.config import stock_unet_kwargs
    except ImportError as e:
        for batch in args.batch:
            common.emit(common.skipped("unet", "torch", args.size, batch, f"diffusers unavailable: {e}"))
        return
    torch = env.torch
    env.seed(args.seed)
    model = UNet2DConditionModel(**stock_unet_kwargs(cfg.unet_diffusers())).to(env.device)
    n_params = sum(p.numel() for p in model.parameters())
    dev = {"device": env.kind, "backend": env.device, "device_count": 1, "torch": torch.__version__}
    peak, peak_reason = (common.peak_tflops(args.peak_tflops) if env.device == "cuda"
                         else (args.peak_tflops or None, "device peak unknown (pass --peak-tflops)"))
    for batch in args.batch:
        x = env.randn(batch, cfg.in_channels, latent, latent)
        t = torch.randint(0, 1000, (batch,), device=env.device)
        ctx = env.randn(batch, 77, cfg.cross_attention_dim)
        for mode in args.modes:
            if mode == "fwd":
                def call():
                    with torch.no_grad(), env.autocast():
                        return model(x, t, encoder_hidden_states=ctx).sample
            else:
                def call():
                    model.zero_grad(set_to_none=True)
                    with env.autocast():
                        out = model(x, t, encoder_hidden_states=ctx).sample
                    loss = out.float().square().mean()
                    loss.backward()
                    return loss
            env.reset_peak()
            t0 = time.perf_counter()
            env.sync(call())
            first = time.perf_counter() - t0
            times = common.time_calls(call, env.sync, args.warmup, args.iters)
            peak_bytes, peak_mem_reason = env.peak_bytes()
            flops, flops_reason = env.count_flops(call)
            common.emit(common.record(
                what=f"unet_{mode}", impl="torch", device=dev, config=args.size, batch=batch, dtype=args.dtype,
                times=times, flops_per_call=flops, compile_s=None, peak_tflops_value=peak, peak_bytes=peak_bytes,
                attention="sdpa", latent=latent, param_dtype="float32", parameters=n_params,
                first_call_s=round(first, 3), flops_source="torch FlopCounterMode",
                reasons={"flops_per_image": flops_reason, "peak_tflops": peak_reason,
                         "peak_memory_bytes": peak_mem_reason, "compile_s": "eager: see first_call_s"}))
    del model


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "sd15"), help="default: tiny on CPU, sd15 on an accelerator")
    p.add_argument("--batch", type=int, nargs="+", help="default: 2 (tiny), 8 16 (sd15)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute; default fp32 (tiny), bf16 (sd15)")
    p.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="JAX parameter storage (fp32 master weights as in training)")
    p.add_argument("--attention", nargs="+", default=["auto"], choices=("auto", "xla", "cudnn"))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--torch", action="store_true", help="also time diffusers' UNet2DConditionModel in this run")
    p.add_argument("--no-jax", action="store_true", help="PyTorch only (with --torch)")
    p.add_argument("--seed", type=int, default=0)
    common.add_common_args(p)
    args = p.parse_args(argv)
    if args.torch:
        # JAX would otherwise reserve 75% of the GPU up front and leave PyTorch, timed later in this process, short.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    if args.size is None:
        args.size = "tiny" if jax.default_backend() == "cpu" else "sd15"
    args.batch = args.batch or ([2] if args.size == "tiny" else [8, 16])
    args.dtype = args.dtype or ("float32" if args.size == "tiny" else "bfloat16")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    cfg, latent = model_config(args.size)
    if not args.no_jax:
        bench_jax(args, cfg, latent)
    if args.torch:
        bench_torch(args, cfg, latent)
    return 0


if __name__ == "__main__":
    sys.exit(main())

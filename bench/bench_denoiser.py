"""Denoiser speed: XPSR's ControlNet + UNet (``XPSR.denoise``), forward at batch 2 (a CFG pair) and 8, and the
training-style forward+backward, JAX beside the PyTorch reference (``xpsr_jax.torch_ref``), one JSON line each.

    python bench/bench_denoiser.py                       # CPU: tiny model, 16x16 latents (128 px LR), fp32
    python bench/bench_denoiser.py --size sd15 --torch   # GPU: 64x64 latents, bf16, vs the official architecture
    python bench/bench_denoiser.py --size sd15 --modes fwd --batch 2 8 16 --attention auto xla

Lines: {"what": "denoiser_fwd" | "denoiser_train_fwd_bwd", "impl": "jax" | "torch_ref", "device", "config",
"batch", "dtype", "attention", "seconds", "images_per_s", "flops_per_image", "tflops_per_s", "mfu",
"peak_memory_bytes", "program_memory_bytes", "compile_s", "anchor_seconds", "null_reasons"}.

The forward returns the noise prediction only, what sampling needs (XLA may drop the DFC heads; PyTorch computes
them). forward+backward is what one training step differentiates: MSE(eps, noise) + dfc_weight x (3 pixel + 13
latent L1 terms), gradients w.r.t. the ControlNet and the UNet's pixel attentions (fp32), the rest frozen in
--frozen-dtype; no VAE, text encoder or optimizer (bench_train.py has the whole step). ``step`` (PyTorch only, what
``bench_train.py --compare-torch`` runs) is the official training step: the HR batch through the frozen VAE encoder
(``latent_dist.sample()``), both prompts through the frozen CLIP text encoder, noising, the forward+backward above,
clipping and AdamW. PyTorch runs fp32 weights under autocast to --dtype (the frozen encoders in --dtype). Anchor (one H100, official PyTorch, bf16): 92 ms per forward at batch 2 and at batch 8.
FLOPs and memory are counted as in bench_unet.py (on a GPU from the lowered HLO: the compiled count misses the
cuBLAS/cuDNN custom calls).
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

# step: PyTorch only, encoders + train + clipping + AdamW (bench_train.py --compare-torch); step_cached: the same
# from cached encoder outputs (z0 and both embeddings given, as JAX's loss.latents/text = "precomputed")
MODES = ("fwd", "train", "step", "step_cached")
STEPS = ("step", "step_cached")
ANCHOR_FWD_SECONDS = {2: 0.092, 8: 0.092}  # official PyTorch on an H100, SD1.5 size (reference/anchors.md)


def model_config(size: str):
    from xpsr_jax.models.config import UNetConfig
    from xpsr_jax.testing import unet_config as tiny_config

    return (UNetConfig(), 64) if size == "sd15" else (tiny_config(), 16)


def train_settings():
    """Which parameters train and the DFC weight, from the paper config (one source of truth)."""
    from xpsr_jax.configs import xpsr_sd15

    c = xpsr_sd15.get_config()
    return tuple(c.optim.trainable), float(c.loss.dfc_weight)


def make_inputs(cfg, batch: int, latent: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    px = 8 * latent
    return {
        "sample": n(batch, latent, latent, cfg.in_channels),
        "timesteps": rng.integers(0, 1000, (batch,)).astype(np.float32),
        "e_high": n(batch, 77, cfg.cross_attention_dim),
        "e_low": n(batch, 77, cfg.cross_attention_dim),
        "cond": rng.uniform(0, 1, (batch, px, px, cfg.conditioning_channels)).astype(np.float32),
        # training targets: HR image in [-1, 1], clean latent, the drawn noise
        "hr": rng.uniform(-1, 1, (batch, px, px, 3)).astype(np.float32),
        "z0": n(batch, latent, latent, cfg.in_channels),
        "noise": n(batch, latent, latent, cfg.in_channels),
    }


FWD_KEYS = ("sample", "timesteps", "e_high", "e_low", "cond")


def jax_fn(cfg, impl: str, dtype, mode: str, dfc_weight: float):
    import jax
    import jax.numpy as jnp

    from xpsr_jax.models.xpsr import XPSR
    from xpsr_jax.train.loss import downsize, l1
    from xpsr_jax.train.partition import merge

    xpsr = XPSR(cfg, impl, dtype)

    def fwd(params, sample, timesteps, e_high, e_low, cond):
        return xpsr.denoise(params, sample, timesteps, e_high, e_low, cond)[0]

    def train(trainable, frozen, sample, timesteps, e_high, e_low, cond, hr, z0, noise):
        def loss(p):
            eps, ctrl = xpsr.denoise(merge(p, frozen), sample, timesteps, e_high, e_low, cond)
            mse = jnp.mean(jnp.square(eps.astype(jnp.float32) - noise))
            rgb = sum((l1(m, downsize(hr, m.shape[1:3])) for m in ctrl.rgb_dfc), jnp.float32(0))
            lat = sum((l1(m, downsize(z0, m.shape[1:3])) for m in ctrl.latent_dfc), jnp.float32(0))
            return mse + dfc_weight * (rgb + lat)

        return jax.value_and_grad(loss)(trainable)

    return jax.jit(fwd if mode == "fwd" else train)


def bench_jax(args, cfg, latent: int) -> None:
    import jax
    import jax.numpy as jnp

    from xpsr_jax.models.xpsr import XPSR
    from xpsr_jax.train.partition import split, trainable_mask

    dev = common.device_facts()
    peak, peak_reason = common.peak_tflops(args.peak_tflops)
    dtype = common.dtype_of(args.dtype)
    patterns, dfc_weight = train_settings()
    t0 = time.perf_counter()
    host = XPSR(cfg).fresh_params(args.seed)
    params_s = time.perf_counter() - t0
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(host))
    trainable, frozen = split(host, trainable_mask(host, patterns))
    # Training keeps fp32 masters of what trains and stores the frozen rest in --frozen-dtype; sampling keeps all
    # parameters in --frozen-dtype too.
    cast = lambda tree, dt: jax.device_put(jax.tree.map(lambda a: a.astype(dt), tree))  # noqa: E731
    trainable, frozen = cast(trainable, np.float32), cast(frozen, args.frozen_dtype)
    n_trainable = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(trainable))
    del host
    jobs = [("fwd", b) for b in args.batch if "fwd" in args.modes]
    jobs += [("train", b) for b in args.train_batch if "train" in args.modes]
    for impl in args.attention:
        fwd_params = None
        for mode, batch in jobs:
            data = {k: jnp.asarray(v) for k, v in make_inputs(cfg, batch, latent, args.seed).items()}
            if mode == "fwd":
                if fwd_params is None:
                    from xpsr_jax.train.partition import merge

                    fwd_params = jax.tree.map(lambda a: a.astype(args.frozen_dtype), merge(trainable, frozen))
                call_args = (fwd_params, *[data[k] for k in FWD_KEYS])
            else:
                call_args = (trainable, frozen, *data.values())
            compiled, compile_s = common.aot_compile(jax_fn(cfg, impl, dtype, mode, dfc_weight), *call_args)
            flops, flops_reason, extra = common.flop_counts(
                compiled, lambda: jax_fn(cfg, "xla", dtype, mode, dfc_weight).lower(*common.on_cpu(call_args)),
                recount=dev["backend"] != "cpu")
            mem, mem_reason = common.program_bytes(compiled)
            times = common.time_calls(lambda: compiled(*call_args), common.block, args.warmup, args.iters)
            peak_bytes, peak_mem_reason = common.jax_peak_bytes()
            what = {"fwd": "denoiser_fwd", "train": "denoiser_train_fwd_bwd", "step": "train_step",
                "step_cached": "train_step"}[mode]
            common.emit(common.record(
                what=what, impl="jax", device=dev, config=args.size, batch=batch, dtype=args.dtype,
                times=times, flops_per_call=flops, compile_s=compile_s, peak_tflops_value=peak,
                peak_bytes=peak_bytes, attention=impl, latent=latent, frozen_dtype=args.frozen_dtype,
                parameters=n_params, trainable_parameters=n_trainable, params_host_s=round(params_s, 3),
                program_memory_bytes=mem, **extra, **anchor(args, mode, batch),
                reasons={"flops_per_image": flops_reason, "peak_tflops": peak_reason,
                         "peak_memory_bytes": peak_mem_reason, "program_memory_bytes": mem_reason}))
            del compiled, call_args, data


def anchor(args, mode: str, batch: int) -> dict:
    if args.size == "sd15" and mode == "fwd" and batch in ANCHOR_FWD_SECONDS:
        return {"anchor_seconds": ANCHOR_FWD_SECONDS[batch], "anchor": "official PyTorch, one H100, bf16"}
    return {"anchor_seconds": None}


def torch_frozen_encoders(size: str, env):
    """SD1.5's VAE and CLIP text encoder as diffusers/transformers classes with random weights (the tiny train
    config's for ``tiny``), frozen, in the compute dtype, as the official training holds them."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from xpsr_jax.configs import tiny, xpsr_sd15
    from xpsr_jax.train.models import build

    nets = build((xpsr_sd15 if size == "sd15" else tiny).get_config().model, "float32")
    vae = AutoencoderKL.from_config(nets.vae_config.to_diffusers())
    text = CLIPTextModel(CLIPTextConfig.from_dict(nets.text.config.to_dict()))
    dtype = env.torch.bfloat16 if env.dtype == "bfloat16" else env.torch.float32
    return [m.to(env.device, dtype).eval().requires_grad_(False) for m in (vae, text)]


def bench_torch(args, cfg, latent: int) -> None:
    env = common.TorchEnv(args.dtype, allow_cpu=True)
    reason = env.reason
    if env.torch is not None:
        try:
            from xpsr_jax.torch_ref import from_configs
        except ImportError as e:
            reason = f"torch_ref unavailable: {e}"
    if reason:
        common.emit(common.skipped("denoiser", "torch_ref", args.size, None, reason))
        return
    torch = env.torch
    F = torch.nn.functional
    _, dfc_weight = train_settings()
    env.seed(args.seed)
    unet, controlnet = from_configs(cfg.unet_diffusers(), cfg.controlnet_diffusers())
    unet, controlnet = unet.to(env.device), controlnet.to(env.device)
    for name, p in unet.named_parameters():
        p.requires_grad_("pixel_attentions" in name)
    n_params = sum(p.numel() for m in (unet, controlnet) for p in m.parameters())
    n_trainable = sum(p.numel() for m in (unet, controlnet) for p in m.parameters() if p.requires_grad)
    dev = {"device": env.kind, "backend": env.device, "device_count": 1, "torch": torch.__version__}
    peak, peak_reason = (common.peak_tflops(args.peak_tflops) if env.device == "cuda"
                         else (args.peak_tflops or None, "device peak unknown (pass --peak-tflops)"))
    jobs = [("fwd", b) for b in args.batch if "fwd" in args.modes]
    jobs += [(m, b) for m in ("train", *STEPS) for b in args.train_batch if m in args.modes]
    trainable = [p for m in (unet, controlnet) for p in m.parameters() if p.requires_grad]
    # the official optimiser: AdamW 5e-5 (0.9, 0.999), eps 1e-8, decay 1e-2, global-norm clipping at 1.0
    opt = torch.optim.AdamW(trainable, lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    vae = text = None
    # SD1.5's scaled-linear schedule: z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) noise
    abar = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0).to(env.device)
    if "step" in args.modes:
        vae, text = torch_frozen_encoders(args.size, env)
    for mode, batch in jobs:
        d = {k: torch.from_numpy(v).to(env.device) for k, v in make_inputs(cfg, batch, latent, args.seed).items()}
        for k in ("sample", "cond", "hr", "z0", "noise"):
            d[k] = d[k].permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        ids = torch.randint(0, 49408, (2 * batch, 77), device=env.device)

        def encode():
            """The official step's frozen part: z0 from the VAE, E_high and E_low from CLIP, the noised latent."""
            with torch.no_grad():
                z0 = vae.encode(d["hr"].to(vae.dtype)).latent_dist.sample().float() * vae.config.scaling_factor
                emb = text(ids)[0]
                d["z0"], d["e_high"], d["e_low"] = z0, emb[:batch], emb[batch:]
                add_noise()

        def add_noise():
            a = abar[d["timesteps"].long()].view(-1, 1, 1, 1)
            d["sample"] = a.sqrt() * d["z0"] + (1 - a).sqrt() * d["noise"]

        def denoise():
            out = controlnet(d["sample"], d["timesteps"], d["e_high"], d["e_low"], d["cond"])
            return unet(d["sample"], d["timesteps"], d["e_high"], out.down_residuals, out.mid_residual), out

        if mode == "fwd":
            def call():
                with torch.no_grad(), env.autocast():
                    return denoise()[0]
        else:
            def call():
                unet.zero_grad(set_to_none=True)
                controlnet.zero_grad(set_to_none=True)
                if mode == "step":
                    encode()
                elif mode == "step_cached":  # z0 and the embeddings are the cached ones
                    with torch.no_grad():
                        add_noise()
                with env.autocast():
                    eps, out = denoise()
                l1 = lambda m, ref: (m.float() - F.interpolate(  # noqa: E731
                    ref, size=m.shape[-2:], mode="bilinear", align_corners=False)).abs().mean()
                loss = (eps.float() - d["noise"]).square().mean() + dfc_weight * (
                    sum(l1(m, d["hr"]) for m in out.rgb_dfc) + sum(l1(m, d["z0"]) for m in out.latent_dfc))
                loss.backward()
                if mode in STEPS:
                    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                    opt.step()
                return loss
        env.reset_peak()
        t0 = time.perf_counter()
        env.sync(call())
        first = time.perf_counter() - t0
        times = common.time_calls(call, env.sync, args.warmup, args.iters)
        peak_bytes, peak_mem_reason = env.peak_bytes()
        flops, flops_reason = env.count_flops(call)
        what = {"fwd": "denoiser_fwd", "train": "denoiser_train_fwd_bwd", "step": "train_step",
                "step_cached": "train_step"}[mode]
        common.emit(common.record(
            what=what, impl="torch_ref", device=dev, config=args.size, batch=batch, dtype=args.dtype, times=times,
            flops_per_call=flops, compile_s=None, peak_tflops_value=peak, peak_bytes=peak_bytes, attention="sdpa",
            latent=latent, parameters=n_params, trainable_parameters=n_trainable, first_call_s=round(first, 3),
            encoders={"step": "in_step", "step_cached": "cached"}.get(mode),
            flops_source="torch FlopCounterMode", **anchor(args, mode, batch),
            reasons={"flops_per_image": flops_reason, "peak_tflops": peak_reason,
                     "peak_memory_bytes": peak_mem_reason, "compile_s": "eager: see first_call_s"}))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "sd15"), help="default: tiny on CPU, sd15 on an accelerator")
    p.add_argument("--batch", type=int, nargs="+", default=[2, 8], help="forward batches")
    p.add_argument("--train-batch", type=int, nargs="+", help="forward+backward batches; default 2 (tiny), 8 (sd15)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute; default fp32 (tiny), bf16 (sd15)")
    p.add_argument("--frozen-dtype", choices=("float32", "bfloat16"),
                   help="storage of frozen (and, in the forward, all) JAX parameters; default: --dtype")
    p.add_argument("--attention", nargs="+", default=["auto"], choices=("auto", "xla", "cudnn"))
    p.add_argument("--torch", action="store_true", help="also time the torch_ref models in this run")
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
    args.dtype = args.dtype or ("float32" if args.size == "tiny" else "bfloat16")
    args.frozen_dtype = args.frozen_dtype or args.dtype
    args.train_batch = args.train_batch or ([2] if args.size == "tiny" else [8])
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

"""Super-resolution speed: seconds per 512^2 output (a 128^2 LR at x4), DDPM 20 steps with CFG, one JSON line each.

    python bench/bench_sr.py                              # CPU: tiny random model, exercises the script
    python bench/bench_sr.py --model sd15 --dtype bfloat16  # GPU: SD1.5-size random weights, JAX vs PyTorch
    python bench/bench_sr.py --weights weights/xpsr          # a converted checkpoint

Lines: {"what": "sr", "impl": "jax" | "torch_ref", "device", "model", "batch", "steps", "dtype",
"seconds_per_image", "images_per_s", "denoise_seconds_per_image", "compile_s", "stages", "peak_memory_bytes" (the
allocator's peak so far in this process, null on CPU: batches run in the given order, so a line holds the largest of
its own and the earlier ones)}. JAX is timed at batch 1 and
8 (steady state, after a compiling first call whose extra time is ``compile_s``); the PyTorch reference pipeline
(``xpsr_jax.torch_ref.pipeline``, the official chain on diffusers classes) runs one image at a time, as the official
test script does, when torch is installed (on CPU only with ``--torch-on-cpu``).

Target: >= 5x faster per image than the official pipeline on the same GPU. The anchor is ~1.9 s of denoiser time
per 512^2 image on an H100 (20 steps, CFG pair); compare ``seconds_per_image`` of both impls from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def _random_sd15_checkpoint(out: Path, seed: int = 0) -> Path:
    """SD1.5-size XPSR + VAE + text encoder with random weights (no downloads), as a checkpoint folder."""
    import dataclasses

    from xpsr_jax.infer.tiny import _random_like
    from xpsr_jax.models.clip_text import SD15_TEXT_CONFIG, init_shapes
    from xpsr_jax.models.config import UNetConfig
    from xpsr_jax.models.vae import abstract_params
    from xpsr_jax.models.vae_config import SD15
    from xpsr_jax.models.xpsr import XPSR
    from xpsr_jax.weights import checkpoint

    rng = np.random.default_rng(seed)
    cfg = UNetConfig()
    params = dict(_random_like(XPSR(cfg).abstract_params(), rng))
    params["vae"] = _random_like(abstract_params(SD15), rng)
    params["text_encoder"] = _random_like(init_shapes(SD15_TEXT_CONFIG), rng)
    meta = {"unet_config": dataclasses.asdict(cfg), "vae_config": dataclasses.asdict(SD15),
            "text_encoder_config": dataclasses.asdict(SD15_TEXT_CONFIG), "source": {"kind": "sd15-random"}}
    return checkpoint.save(out, params, meta, overwrite=True)


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def bench_jax(weights: Path, args, device: str) -> None:
    import jax

    from xpsr_jax.infer.pipeline import SRPipeline
    from xpsr_jax.infer.settings import SRSettings

    pipe = SRPipeline.from_pretrained(weights, SRSettings(steps=args.steps, dtype=args.dtype,
                                                          process_size=args.process_size))
    rng = np.random.default_rng(0)
    for batch in args.batches:
        images = [rng.integers(0, 256, (args.lr, args.lr, 3), dtype=np.uint8) for _ in range(batch)]
        ids = [f"img{i}" for i in range(batch)]
        t0 = time.perf_counter()
        pipe.super_resolve(images, None, ids)
        first = time.perf_counter() - t0
        times, stages = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = pipe.super_resolve(images, None, ids)
            times.append(time.perf_counter() - t0)
            stages = res[0].seconds
        steady = float(np.median(times))
        peak, _ = common.jax_peak_bytes()
        _emit({"what": "sr", "impl": "jax", "peak_memory_bytes": peak, "device": device, "model": args.model, "batch": batch,
               "steps": args.steps, "dtype": args.dtype, "output": list(res[0].image.shape[:2]),
               "seconds_per_image": steady / batch, "images_per_s": batch / steady,
               "denoise_seconds_per_image": stages["denoise"], "compile_s": first - steady,
               "devices": len(jax.local_devices()), "stages": stages})


def bench_torch(weights: Path, args, device: str) -> None:
    import torch

    from xpsr_jax.data.tokenizer import ClipTokenizer
    from xpsr_jax.infer import noise
    from xpsr_jax.infer.preprocess import plan_sizes, to_process_size
    from xpsr_jax.infer.prompts import Prompt, prompt_texts, token_ids
    from xpsr_jax.infer.settings import SRSettings
    from xpsr_jax.torch_ref.pipeline import TorchSRPipeline

    on = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    ref = TorchSRPipeline.from_flax_checkpoint(weights).to(on, dtype)
    s = SRSettings(steps=args.steps, process_size=args.process_size)
    lr = np.random.default_rng(0).integers(0, 256, (args.lr, args.lr, 3), dtype=np.uint8)
    plan = plan_sizes((args.lr, args.lr), s.upscale, s.process_size)
    image = to_process_size(lr, plan)
    hi, lo = token_ids(ClipTokenizer.load(), [prompt_texts(Prompt(), s)])
    draws = noise.draw_all(noise.image_keys(0, ["img0"]), (*plan.latent, 4), s.steps)
    times = []
    for i in range(1 + args.repeats):
        if on == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ref(image, hi[0], lo[0], draws, steps=s.steps)
        if on == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    steady = float(np.median(times[1:]))
    peak = int(torch.cuda.max_memory_allocated()) if on == "cuda" else None
    _emit({"what": "sr", "impl": "torch_ref", "peak_memory_bytes": peak, "device": device if on == "cuda" else "cpu", "model": args.model,
           "batch": 1, "steps": args.steps, "dtype": args.dtype, "seconds_per_image": steady,
           "images_per_s": 1 / steady, "first_call_s": times[0]})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, help="checkpoint folder (default: random weights of --model)")
    p.add_argument("--model", choices=("tiny", "sd15"), help="random model when no --weights (default: sd15 on "
                                                             "GPU/TPU, tiny on CPU)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=int, default=128, help="LR side; x4 -> the output side")
    p.add_argument("--process-size", type=int, default=512)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--torch-on-cpu", action="store_true", help="also time the PyTorch pipeline without a GPU")
    args = p.parse_args(argv)

    import jax

    backend = jax.default_backend()
    device = jax.local_devices()[0].device_kind
    if args.model is None:
        args.model = "tiny" if backend == "cpu" and args.weights is None else "sd15"
    if backend == "cpu" and args.weights is None and args.model == "tiny":
        # a CPU run only exercises the script: small sizes, few repeats
        args.lr, args.process_size, args.batches, args.repeats = 32, 128, [1, 2], 1
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            from xpsr_jax.infer.tiny import make_tiny_checkpoint

            weights = (make_tiny_checkpoint(Path(tmp) / "tiny") if args.model == "tiny"
                       else _random_sd15_checkpoint(Path(tmp) / "sd15"))
        bench_jax(weights, args, device)
        if not args.no_torch:
            try:
                import torch
            except ImportError:
                return 0
            if torch.cuda.is_available() or args.torch_on_cpu:
                bench_torch(weights, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``xpsr-jax sr INPUT... OUT --weights W``: super-resolve image files and folders with a converted checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXAMPLES = """examples:
  xpsr-jax sr photo.png out/ --weights weights/xpsr                  # -> out/photo.png + out/photo.json
  xpsr-jax sr testset/RealSR/LR out/ --weights weights/xpsr --captions captions.jsonl
  xpsr-jax sr a.jpg b.jpg out/ --weights W --prompt "a red car" --lowlevel-prompt "blurry, noisy"
  xpsr-jax sr big.png out/ --weights W --upscale 2.5 --memory-budget-gb 16 --dtype bfloat16

prompts, per field, first found: --prompt/--lowlevel-prompt; the --captions store (id = path relative to the
input folder, no extension); NAME.txt / NAME.lowlevel.txt beside the image; DIR/highlevel_prompt/NAME.txt and
DIR/lowlevel_prompt_q/NAME.txt for images in DIR/LR/; else empty. Images that fail (unreadable, too large, ...)
are listed at the end and the exit code is 1; the others are still written.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from xpsr_jax.infer.settings import SRSettings

    d = SRSettings()
    p = sub.add_parser("sr", help="super-resolve images (files or folders) with XPSR",
                       description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="INPUT... OUT", help="image files or folders, then the output folder")
    p.add_argument("--weights", required=True, type=Path, help="Flax checkpoint folder (xpsr-jax convert ... --sd15)")
    g = p.add_argument_group("prompts")
    g.add_argument("--captions", type=Path, help="caption store (JSONL) with highlevel/lowlevel fields")
    g.add_argument("--prompt", help="high-level caption for every image (overrides other sources)")
    g.add_argument("--lowlevel-prompt", help="low-level quality description for every image")
    g.add_argument("--added-prompt", default=d.added_prompt, help="appended to the caption (default: %(default)r)")
    g.add_argument("--negative-prompt", default=d.negative_prompt, help="high-level negative (default: %(default)r)")
    g.add_argument("--lowlevel-negative-prompt", default=d.lowlevel_negative_prompt,
                   help="low-level negative (default: %(default)r)")
    s = p.add_argument_group("sampling (defaults: the official test settings)")
    s.add_argument("--upscale", type=float, default=d.upscale, help="scale factor, any > 0 (default 4)")
    s.add_argument("--process-size", type=int, default=d.process_size, help="short side raised to this (512)")
    s.add_argument("--steps", type=int, default=d.steps)
    s.add_argument("--sampler", default=d.sampler, choices=("ddpm", "ddim", "dpmsolver++"))
    s.add_argument("--guidance", type=float, default=d.guidance_scale, help="CFG scale (4.5)")
    s.add_argument("--conditioning-scale", type=float, default=d.conditioning_scale)
    s.add_argument("--added-noise-level", type=int, default=d.added_noise_level, help="second noising step (800)")
    s.add_argument("--color-fix", default=d.color_fix, choices=("adain", "wavelet", "none"))
    s.add_argument("--seed", type=int, default=d.seed, help="same seed + same image name = same output (0)")
    s.add_argument("--dtype", default=d.dtype, choices=("float32", "bfloat16"), help="UNet/ControlNet compute")
    r = p.add_argument_group("resources")
    r.add_argument("--batch-size", type=int, default=d.batch_size, help="images per device per call, at most")
    r.add_argument("--memory-budget-gb", type=float, help="device memory to plan tiles for (default: 80%% of it)")
    r.add_argument("--max-latent-tile", type=int, default=d.max_latent_tile,
                   help="tile the denoiser above this latent side (320 = 2560 px, the official threshold)")
    r.add_argument("--max-vae-tile", type=int, help="cap on the VAE tile side in latent pixels")
    r.add_argument("--max-input-pixels", type=int, default=d.max_input_pixels,
                   help="refuse larger inputs before decoding (default %(default)s)")
    p.set_defaults(func=run)


def _settings(args):
    from xpsr_jax.infer.settings import SRSettings

    return SRSettings(
        upscale=args.upscale, process_size=args.process_size, steps=args.steps, sampler=args.sampler,
        guidance_scale=args.guidance, conditioning_scale=args.conditioning_scale,
        added_noise_level=args.added_noise_level, added_prompt=args.added_prompt,
        negative_prompt=args.negative_prompt, lowlevel_negative_prompt=args.lowlevel_negative_prompt,
        color_fix=args.color_fix, seed=args.seed, dtype=args.dtype, batch_size=args.batch_size,
        memory_budget_gb=args.memory_budget_gb, max_latent_tile=args.max_latent_tile,
        max_vae_tile=args.max_vae_tile, max_input_pixels=args.max_input_pixels)


def run(args) -> int:
    if len(args.paths) < 2:
        print("xpsr-jax sr: give at least one INPUT and the OUT folder", file=sys.stderr)
        return 2
    *inputs, out = args.paths
    out = Path(out)
    from xpsr_jax.infer.runner import SRRunner

    t0 = time.time()
    settings = _settings(args)
    runner = SRRunner.create(args.weights, settings, captions=args.captions, prompt=args.prompt,
                             lowlevel_prompt=args.lowlevel_prompt)
    report = runner.run(inputs, out)
    print(f"wrote {report.written} image(s) to {out} in {time.time() - t0:.1f} s")
    if report.no_prompt:
        print(f"{report.no_prompt} image(s) had no prompts and ran with empty ones (caption = only the added prompt)")
    if report.failed:
        print(f"{len(report.failed)} input(s) failed:", file=sys.stderr)
        for path, why in report.failed:
            print(f"  {path}: {why}", file=sys.stderr)
        (out / "failed.json").write_text(json.dumps([{"path": p, "error": w} for p, w in report.failed], indent=2))
        return 1
    return 0

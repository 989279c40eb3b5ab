"""``xpsr-jax sr INPUT... OUT --weights W``: super-resolve image files and folders with a converted checkpoint."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from xpsr_jax.args import add_overwrite, finite_float, int_in, positive_float, positive_int
from xpsr_jax.nn.attention_policy import IMPLS
from xpsr_jax.paths import run_path
from xpsr_jax.train.plan_cli import SR_PLAN_HELP, add_sr_plan_arguments, run_sr_plan

EXAMPLES = """examples:
  xpsr-jax sr photo.png out/ --weights weights/xpsr                  # -> out/photo.png + out/photo.json
  xpsr-jax sr testset/RealSR/LR out/ --weights weights/xpsr --captions captions.jsonl
  xpsr-jax sr a.jpg b.jpg out/ --weights W --prompt "a red car" --lowlevel-prompt "blurry, noisy"
  xpsr-jax sr big.png out/ --weights W --upscale 2.5 --memory-budget-gb 16 --dtype bfloat16
  xpsr-jax sr LR/ gs://bucket/sr --weights gs://bucket/xpsr --captions gs://bucket/captions.jsonl

prompts, per field, first found: --prompt/--lowlevel-prompt; the --captions store (id = path relative to the
input folder, no extension); NAME.txt / NAME.lowlevel.txt beside the image; DIR/highlevel_prompt/NAME.txt and
DIR/lowlevel_prompt_q/NAME.txt for images in DIR/LR/; else empty. Images that fail (unreadable, too large, a
prompt file that is not UTF-8, ...) are listed at the end and in OUT/failed.json, and the exit code is 1; the
others are still written.

existing files: OUT may not be an input folder or lie inside one, and no output may be an input file (refused
even with --overwrite); outputs that exist already (OUT/NAME.png, OUT/NAME.json, OUT/failed.json) are refused
before the model loads unless --overwrite is given. OUT, --weights and --captions may be gs:// (INPUTs are local or
mounted): each image's sidecar and then its PNG are uploaded as its batch finishes.
exit status: 0 when every input was written; 1 when some input failed (or none was found); 2 for bad arguments.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from xpsr_jax.infer.settings import SRSettings

    d = SRSettings()
    p = sub.add_parser("sr", help="super-resolve images (files or folders) with XPSR",
                       description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="INPUT... OUT", help="image files or folders, then the output folder")
    p.add_argument("--weights", type=run_path, help="Flax checkpoint folder (xpsr-jax convert ... --sd15); required "
                                                "unless --compile-only")
    add_overwrite(p)
    g = p.add_argument_group("prompts")
    g.add_argument("--captions", type=run_path,
                   help="caption store (JSONL, local or gs://) with highlevel/lowlevel fields")
    g.add_argument("--prompt", help="high-level caption for every image (overrides other sources)")
    g.add_argument("--lowlevel-prompt", help="low-level quality description for every image")
    g.add_argument("--added-prompt", default=d.added_prompt, help="appended to the caption (default: %(default)r)")
    g.add_argument("--negative-prompt", default=d.negative_prompt, help="high-level negative (default: %(default)r)")
    g.add_argument("--lowlevel-negative-prompt", default=d.lowlevel_negative_prompt,
                   help="low-level negative (default: %(default)r)")
    s = p.add_argument_group("sampling (defaults: the official test settings)")
    s.add_argument("--upscale", type=positive_float, default=d.upscale, help="scale factor, any > 0 (default 4)")
    s.add_argument("--process-size", type=positive_int, default=d.process_size, help="short side raised to this (512)")
    s.add_argument("--steps", type=int_in(1, 1000), default=d.steps)
    s.add_argument("--sampler", default=d.sampler, choices=("ddpm", "ddim", "dpmsolver++"))
    s.add_argument("--guidance", type=finite_float, default=d.guidance_scale, help="CFG scale (4.5)")
    s.add_argument("--conditioning-scale", type=finite_float, default=d.conditioning_scale)
    s.add_argument("--added-noise-level", type=int_in(0, 999), default=d.added_noise_level,
                   help="second noising step (800)")
    s.add_argument("--color-fix", default=d.color_fix, choices=("adain", "wavelet", "none"))
    s.add_argument("--seed", type=int, default=d.seed, help="same seed + same image name = same output (0)")
    s.add_argument("--dtype", default=d.dtype, choices=("float32", "bfloat16"),
                   help="UNet/ControlNet compute; bfloat16 is for GPU/TPU (XLA:CPU computes it in f32 from f32 copies "
                        "of the weights: more memory, no gain)")
    r = p.add_argument_group("resources")
    r.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="images per device per call, at most")
    r.add_argument("--memory-budget-gb", type=positive_float,
                   help="device memory to plan tiles for (default: 80%% of it)")
    r.add_argument("--max-latent-tile", type=positive_int, default=d.max_latent_tile,
                   help="tile the denoiser above this latent side (320 = 2560 px, the official threshold)")
    r.add_argument("--max-vae-tile", type=positive_int, help="cap on the VAE tile side in latent pixels")
    r.add_argument("--attention", default=d.attention_impl, choices=IMPLS,
                   help="attention kernels: auto = splash on TPU, cuDNN flash on GPU where it applies, else XLA "
                        "(default %(default)s)")
    r.add_argument("--splash-min-length", type=positive_int, default=d.splash_min_length,
                   help="TPU: self-attentions of at least this many tokens use splash (default %(default)s)")
    r.add_argument("--max-input-pixels", type=positive_int, default=d.max_input_pixels,
                   help="refuse larger inputs before decoding (default %(default)s)")
    add_sr_plan_arguments(p)
    p.epilog = EXAMPLES + SR_PLAN_HELP
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
        max_vae_tile=args.max_vae_tile, max_input_pixels=args.max_input_pixels, attention_impl=args.attention,
        splash_min_length=args.splash_min_length)


def run(args) -> int:
    from xpsr_jax.errors import NothingDoneError, UsageError
    from xpsr_jax.files import strict_json_dumps
    from xpsr_jax.infer.inputs import discover
    from xpsr_jax.outputs import require_file, require_folder, writable_folder
    from xpsr_jax.paths import as_path, check_local, replacing

    if args.compile_only:  # plans a TPU slice: no inputs, outputs or weights are touched
        return run_sr_plan(args, _settings(args))
    if args.topology:
        raise UsageError("--topology plans a slice: add --compile-only")
    if len(args.paths) < 2:
        raise UsageError("give at least one INPUT and the OUT folder")
    if args.weights is None:
        raise UsageError("--weights is required (unless --compile-only)")
    *inputs, out = args.paths
    for value in inputs:
        check_local(value, "INPUT")  # images are read from local or mounted folders
    out = as_path(out, "OUT")  # a local folder or a gs:// prefix (each image is uploaded when written)
    settings = _settings(args)
    # everything a user can get wrong is checked before the model loads
    require_folder(args.weights, "--weights")
    from xpsr_jax.weights.checkpoint import read_meta

    read_meta(args.weights)
    require_file(args.captions, "--captions")
    items, problems = discover(inputs)
    _check_outputs(inputs, items, out, args.overwrite)
    if isinstance(out, Path):  # a gs:// prefix needs no creating
        writable_folder(out)
    failed_json = out / "failed.json"

    prompts = _prompt_finder(args)
    items, problems = _readable(items, problems, prompts)  # a corrupt header or prompt file: no model load

    t0 = time.time()
    if items:
        from xpsr_jax.infer.pipeline import SRPipeline
        from xpsr_jax.infer.runner import SRRunner

        runner = SRRunner(SRPipeline.from_pretrained(args.weights, settings), prompts)
        report = runner.run_items(items, problems, out)
        written, no_prompt, failed = report.written, report.no_prompt, report.failed
    else:
        written, no_prompt, failed = 0, 0, problems
    print(f"wrote {written} image(s) to {out} in {time.time() - t0:.1f} s")
    if no_prompt:
        print(f"{no_prompt} image(s) had no prompts and ran with empty ones (caption = only the added prompt)")
    if failed:
        print(f"{len(failed)} input(s) failed:", file=sys.stderr)
        for path, why in failed:
            print(f"  {path}: {why}", file=sys.stderr)
        text = strict_json_dumps([{"path": p, "error": w} for p, w in failed]) + "\n"
        with replacing(failed_json) as f:  # local or in a bucket, it appears whole
            f.write(text.encode("utf-8"))
        if not written:
            raise NothingDoneError(f"no image was written; the failures are listed in {failed_json}")
        return 1
    if failed_json.exists():  # from an earlier run (replaced only with --overwrite): no longer true
        failed_json.unlink()
    return 0


def _prompt_finder(args):
    from xpsr_jax.infer.inputs import PromptFinder

    store = None
    if args.captions is not None:
        from xpsr_jax.captions.store import CaptionStore

        store = CaptionStore.open(args.captions)
    return PromptFinder(args.prompt, args.lowlevel_prompt, store)


def _readable(items, problems, prompts):
    """The items whose image header and prompt files can be read; the others join ``problems`` (reported as
    failed, never run)."""
    from xpsr_jax.data.images import ImageDecodeError
    from xpsr_jax.errors import TextDecodeError
    from xpsr_jax.infer.preprocess import image_size

    kept, problems = [], list(problems)
    for item in items:
        try:
            image_size(item.path)
            prompts.find(item)
            kept.append(item)
        except (ImageDecodeError, TextDecodeError, OSError) as e:
            problems.append((str(item.path), str(e)))
    return kept, problems


def _check_outputs(inputs: list[str], items, out, overwrite: bool) -> None:
    """Refuse an OUT that is (or lies inside) an input folder, outputs that would replace an input file (always),
    and outputs that exist already (unless ``overwrite``). ``out`` is a Path or a gs:// prefix (whose objects are
    listed once rather than asked for one by one)."""
    from xpsr_jax.errors import OutputExistsError, UsageError
    from xpsr_jax.infer.runner import output_paths
    from xpsr_jax.outputs import refuse_existing, refuse_over_inputs
    from xpsr_jax.paths import list_objects

    targets = [p for item in items for p in output_paths(item, out)] + [out / "failed.json"]
    if not isinstance(out, Path):  # a bucket: never an input (inputs are local)
        if out.exists() and not out.is_dir():
            raise OutputExistsError(f"OUT {out} is an object, not a prefix")
        held = set(list_objects(out))
        refuse_existing([t for t in targets if str(t) in held], overwrite, "OUT")
        return
    refuse_over_inputs(out, [("INPUT", p) for p in inputs if Path(p).is_dir()])
    if out.exists() and not out.is_dir():
        what = "an input" if any(Path(p).resolve() == out.resolve() for p in inputs) else "a file"
        raise OutputExistsError(f"OUT {out} is {what}, not a folder")
    sources = {item.path.resolve(): item.path for item in items}
    for t in targets:
        if t.resolve() in sources:
            raise UsageError(f"OUT {out}: the output {t} would replace the input {sources[t.resolve()]}")
    refuse_existing(targets, overwrite, "OUT")

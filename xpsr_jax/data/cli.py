"""The ``xpsr-jax make-data`` subcommand: HR images -> degraded LR/HR training pairs in ArrayRecord shards."""

from __future__ import annotations

import argparse
import sys

from xpsr_jax.args import add_overwrite, nonnegative_int, positive_int

HELP = "degraded LR/HR training pairs (+ captions) from HR images -> ArrayRecord shards"

DESCRIPTION = """\
Crop every HR image to 512x512 (random position, horizontal flip p=0.5, reflect padding when smaller),
sharpen it (USM) and degrade it with the Real-ESRGAN chain XPSR's data used; store the pair as PNGs in
OUT/records/train-NNNNN-of-MMMMM.array_record, with the image's prompts when --captions is given and the
random draws in each record's metadata. HR_DIR is a folder (searched recursively for png, jpg, jpeg, webp,
bmp, tif) or a tfds dataset name such as div2k (downloaded and prepared by tfds: needs network access).

Rerunning with the same settings resumes: complete shards are kept, the rest is redone. Every (image, copy)
is seeded by (--seed, copy, image index) alone, so hosts and workers do not change the result. When all
shards exist, tfds metadata is written: tfds.builder_from_directory("OUT/records").as_data_source() works.

--cache-latents --weights W also stores, with the Flax checkpoint W's encoders, the VAE posterior (mean and
log-variance, bfloat16) of every HR crop in its record and the CLIP embeddings of the prompts training feeds in
OUT/embeddings/ (keyed by text); training with config.loss.latents="precomputed" and config.loss.text=
"precomputed" then runs neither the VAE encoder nor the text encoder.

Unreadable files are skipped and counted (--on-error fail stops instead); grayscale, alpha, 16-bit, CMYK
and palette images are converted (see xpsr_jax/data/images.py); images under 512 pixels are padded.
"""

EPILOG = """\
examples:
  xpsr-jax make-data data/DIV2K_train_HR data/pairs --workers 8
  xpsr-jax make-data data/HR data/pairs --epochs 10 --captions captions.jsonl --workers 16
  xpsr-jax make-data data/HR data/pairs --num-hosts 4 --host-index 2      # one of four machines
  xpsr-jax make-data data/HR data/pairs --lr-size 128 --share-draws 10    # raw LR, official batch sharing
  xpsr-jax make-data data/HR data/hr_only --hr-only                       # for online degradation
  xpsr-jax make-data data/HR data/train --captions captions.jsonl --cache-latents --weights weights/xpsr-init
  xpsr-jax make-data div2k data/pairs --tfds-split train                  # tfds (online)

existing files: rerunning into OUT with the same settings resumes (finished shards are kept); OUT made with
other settings is refused unless --overwrite, which deletes what make-data wrote there (records/, stats/,
embeddings/, plan.json, summary*.json) and starts over. OUT may not be HR_DIR, lie inside it, or be the --captions file.
Every file appears atomically (shards under a temporary name, then renamed).

exit status: 0 when this host's shards are complete; 1 on an error naming its cause, or when no pair could be
written (every image skipped: the dataset is then not marked complete); 2 for bad arguments or a refused OUT.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``make-data`` on an argparse subparsers object; the parsed args carry ``func=run``."""
    p = subparsers.add_parser("make-data", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="HR_DIR", help="folder of HR images, or a tfds dataset name")
    p.add_argument("out", metavar="OUT", help="output folder (records/, stats/, plan.json, summary.json)")
    p.add_argument("--epochs", type=positive_int, default=1, metavar="K",
                   help="degraded copies of every image, each with new draws (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default: %(default)s)")
    p.add_argument("--lr-size", type=positive_int, default=None,
                   help="LR stored bicubic-upsampled to the crop size (default, what XPSR trains on) or at "
                        "crop/4 (128)")
    p.add_argument("--crop-size", type=positive_int, default=512, help="HR crop size (default: %(default)s)")
    p.add_argument("--hr-only", action="store_true",
                   help="store the whole decoded HR image and no LR: the training pipeline degrades online")
    p.add_argument("--captions", metavar="JSONL",
                   help="caption store: one {\"id\", \"highlevel\", \"lowlevel\", \"highlevel_hr\", "
                        "\"lowlevel_hr\"} object per line; id = path under HR_DIR without extension")
    p.add_argument("--workers", type=nonnegative_int, default=0, metavar="N",
                   help="worker processes (0 or 1: in this process; default: %(default)s)")
    p.add_argument("--num-hosts", type=positive_int, default=1, help="machines sharing the work (default: %(default)s)")
    p.add_argument("--host-index", type=nonnegative_int, default=0, help="this machine's index (default: %(default)s)")
    p.add_argument("--shard-size", type=positive_int, default=500, metavar="N",
                   help="pairs per shard, about 0.6 MB each at 512 (default: %(default)s)")
    p.add_argument("--share-draws", type=nonnegative_int, default=0, metavar="B",
                   help="share the batch-level degradation draws within groups of B images, as the official "
                        "script's batches of 10 did (default: 0, every draw per image)")
    p.add_argument("--no-usm", dest="use_usm", action="store_false",
                   help="keep the HR crop unsharpened (the official data sharpens it)")
    p.add_argument("--alpha", choices=("white", "drop"), default="white",
                   help="images with transparency: composite on white, or drop alpha (default: %(default)s)")
    p.add_argument("--min-pixels", type=nonnegative_int, default=0,
                   help="skip images with fewer pixels (SeeSR's data used 147456 = 384^2; default: 0)")
    p.add_argument("--min-bytes", type=nonnegative_int, default=0,
                   help="skip files smaller than this (SeeSR's data used 102400; default: 0)")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="an unreadable image: skip and count it, or stop (default: %(default)s)")
    p.add_argument("--tfds-split", default="train", help="tfds source: split (default: %(default)s)")
    p.add_argument("--tfds-data-dir", help="tfds source: data_dir of a prepared copy")
    p.add_argument("--tfds-image-key", help="tfds source: image feature (default: hr if present, else image)")
    p.add_argument("--cache-latents", action="store_true",
                   help="store the HR crops' VAE posteriors in the records and the prompt embeddings in "
                        "OUT/embeddings/, encoded with --weights (train then skips both encoders)")
    p.add_argument("--weights", metavar="W",
                   help="Flax checkpoint (xpsr-jax convert) whose VAE and text encoder --cache-latents uses")
    p.add_argument("--cache-batch", type=positive_int, default=16, metavar="N",
                   help="images (and prompts) per encoder call with --cache-latents; part of the stored plan, "
                        "as the batch changes XLA's rounding (default: %(default)s)")
    p.add_argument("--highlevel-prompt", choices=("empty", "caption"), default="empty",
                   help="high-level input to cache embeddings for: empty, as XPSR trains, or the caption (as "
                        "config.model.highlevel_prompt; default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_overwrite(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xpsr_jax.data.make_data import format_summary, make_data
    from xpsr_jax.errors import OutputExistsError, UsageError, XPSRError
    from xpsr_jax.outputs import refuse_over_inputs, require_file, require_folder
    from xpsr_jax.paths import check_local

    try:
        check_local(args.out, "OUT")
        check_local(args.source, "HR_DIR")
        if Path(args.source).exists():
            require_folder(args.source, "HR_DIR")
        require_file(args.captions, "--captions")
        _check_cache_flags(args)
        hr_dir = args.source if Path(args.source).is_dir() else None
        refuse_over_inputs(args.out, [("HR_DIR", hr_dir), ("--captions", args.captions), ("--weights", args.weights)])
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise OutputExistsError(f"OUT {args.out} is a file, not a folder")
        try:
            cfg = _config(args)
        except ValueError as e:  # settings that contradict each other (--host-index past --num-hosts, ...)
            raise UsageError(str(e)) from None
        summary = make_data(cfg)
    except XPSRError:
        raise  # reported by xpsr_jax.cli.main with its own exit code
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"xpsr-jax make-data: error: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


def _check_cache_flags(args: argparse.Namespace) -> None:
    """--cache-latents and --weights go together; the checkpoint must hold a VAE and a text encoder."""
    from xpsr_jax.errors import UsageError
    from xpsr_jax.outputs import require_folder
    from xpsr_jax.paths import check_local

    if args.weights and not args.cache_latents:
        raise UsageError("--weights is only used with --cache-latents")
    if not args.cache_latents:
        return
    if not args.weights:
        raise UsageError("--cache-latents needs --weights W, a Flax checkpoint with a VAE and a text encoder")
    if args.hr_only:
        raise UsageError("--cache-latents cannot be used with --hr-only: HR-only records are cropped online")
    check_local(args.weights, "--weights")
    require_folder(args.weights, "--weights")
    from xpsr_jax.weights.checkpoint import CheckpointError, read_meta

    try:
        meta = read_meta(args.weights)
    except CheckpointError as e:
        raise UsageError(f"--weights: {e}") from None
    lacking = [what for key, what in (("vae_config", "VAE"), ("text_encoder_config", "text encoder"))
               if key not in meta]
    if lacking:
        raise UsageError(f"--weights {args.weights} holds no {' and no '.join(lacking)} (convert it with --sd15)")


def _config(args: argparse.Namespace):
    """The run's MakeDataConfig; a ValueError when settings contradict each other."""
    from xpsr_jax.data.make_data import MakeDataConfig

    return MakeDataConfig(source=args.source, out=args.out, epochs=args.epochs, seed=args.seed,
                          crop_size=args.crop_size, lr_size=args.lr_size, hr_only=args.hr_only,
                          shard_size=args.shard_size, workers=args.workers, num_hosts=args.num_hosts,
                          host_index=args.host_index, captions=args.captions, share_draws=args.share_draws,
                          use_usm=args.use_usm, alpha=args.alpha, min_pixels=args.min_pixels,
                          min_bytes=args.min_bytes, on_error=args.on_error, tfds_split=args.tfds_split,
                          tfds_data_dir=args.tfds_data_dir, tfds_image_key=args.tfds_image_key,
                          cache_weights=args.weights if args.cache_latents else None, cache_batch=args.cache_batch,
                          highlevel_prompt=args.highlevel_prompt, progress=args.progress,
                          overwrite=args.overwrite)

"""``xpsr-jax convert``: SD1.5 -> XPSR (initialised), official PyTorch checkpoint -> Flax, Flax -> PyTorch."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from xpsr_jax.args import add_overwrite
from xpsr_jax.paths import local_path, run_path

EXAMPLES = """examples:
  xpsr-jax convert sd15 runwayml/stable-diffusion-v1-5 weights/xpsr-init      # hub id (online) or a local folder
  xpsr-jax convert from-torch runs/xpsr/checkpoint-300000 weights/xpsr --sd15 path/to/sd15
  xpsr-jax convert to-torch weights/xpsr exported/        # -> exported/{unet,controlnet}/

existing files: an OUT that exists (to-torch: OUT/unet or OUT/controlnet) is refused before anything is read,
unless --overwrite; an OUT that is an input, lies inside one or holds one is refused even with --overwrite.
Everything appears atomically (a Flax checkpoint is written to OUT.tmp and renamed; each PyTorch file likewise).

exit status: 0 when OUT was written; 1 when a weight file or config is missing, corrupt or does not fit the
model (the message names it); 2 for bad arguments, a missing input folder or a refused OUT.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert weights between PyTorch and Flax",
                       description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    conv = p.add_subparsers(dest="direction", required=True)

    s = conv.add_parser("sd15", help="a diffusers SD1.5 folder or hub id -> a Flax XPSR checkpoint initialised by "
                                     "XPSR's rules (+ VAE, text encoder, tokenizer)")
    s.add_argument("src", help="diffusers SD1.5 folder (unet/ vae/ text_encoder/ tokenizer/) or hub id")
    s.add_argument("out", type=Path, help="output Flax checkpoint folder")
    s.add_argument("--seed", type=int, default=0, help="seed of the freshly initialised layers (default 0)")
    add_overwrite(s)
    s.set_defaults(func=run_sd15)

    f = conv.add_parser("from-torch", help="an official XPSR checkpoint-N folder -> Flax")
    f.add_argument("ckpt", type=Path, help="folder holding unet/ and controlnet/ (safetensors or .bin)")
    f.add_argument("out", type=Path)
    f.add_argument("--sd15", help="SD1.5 folder or hub id for the VAE, text encoder and tokenizer")
    add_overwrite(f)
    f.set_defaults(func=run_from_torch)

    t = conv.add_parser("to-torch", help="a Flax checkpoint -> OUT/{unet,controlnet} for the official code")
    t.add_argument("flax", type=run_path, help="Flax checkpoint folder (local or gs://)")
    t.add_argument("out", type=local_path)
    add_overwrite(t)
    t.set_defaults(func=run_to_torch)


def _sd15_extras(src: str | None) -> tuple[dict, dict, Path | None, str | None]:
    """VAE, text encoder and tokenizer of an SD1.5 folder (or hub id) -> (params, meta, tokenizer dir, root)."""
    if src is None:
        return {}, {}, None, None
    from xpsr_jax.weights import io
    from xpsr_jax.weights.clip_text import load_clip_text
    from xpsr_jax.weights.vae import load_vae

    root = io.resolve_model_source(src, ("unet", "vae", "text_encoder", "tokenizer"))
    vae_cfg, vae = load_vae(root / "vae")
    te_cfg, te = load_clip_text(root / "text_encoder")
    params = {"vae": vae, "text_encoder": te}
    meta = {"vae_config": dataclasses.asdict(vae_cfg), "text_encoder_config": dataclasses.asdict(te_cfg)}
    tok = root / "tokenizer" if (root / "tokenizer").is_dir() else None
    return params, meta, tok, str(src)


def _check_out(out: Path, inputs: list[tuple[str, str | Path | None]], overwrite: bool,
               existing: list[Path] | None = None) -> None:
    """Before anything is read: OUT never over an input (the old OUT is deleted when replaced), and existing
    results only with --overwrite. Inputs that are not local paths (hub ids) are skipped."""
    from xpsr_jax.outputs import folder_or_absent, refuse_existing, refuse_over_inputs

    local = [(label, p) for label, p in inputs if p is not None and Path(p).exists()]
    refuse_over_inputs(out, local, "OUT", replaces_folder=True)
    folder_or_absent(out)  # even with --overwrite: a checkpoint folder never replaces a file
    refuse_existing(existing if existing is not None else [out], overwrite, "OUT")


def run_sd15(args) -> int:
    from xpsr_jax.weights import checkpoint, io
    from xpsr_jax.weights.xpsr_convert import init_from_sd15, read_sd15_unet

    _check_out(args.out, [("SRC", args.src)], args.overwrite)
    t0 = time.time()
    root = io.resolve_model_source(args.src, ("unet", "vae", "text_encoder", "tokenizer"))
    print(f"reading the SD1.5 VAE and text encoder from {root}")
    extras, meta, tok, _ = _sd15_extras(str(root))
    print(f"reading the SD1.5 UNet from {root / 'unet'}")
    cfg, sd_unet = read_sd15_unet(root / "unet")
    print("initialising XPSR from it (ControlNet from the UNet, SFA copies, fresh heads)")
    params = init_from_sd15(cfg, sd_unet, seed=args.seed)
    params.update(extras)
    meta.update(unet_config=dataclasses.asdict(cfg), source={"kind": "sd15", "path": str(args.src),
                                                              "seed": args.seed})
    out = checkpoint.save(args.out, params, meta, tokenizer_dir=tok, overwrite=args.overwrite)
    print(f"wrote {out} in {time.time() - t0:.1f} s")
    return 0


def run_from_torch(args) -> int:
    from xpsr_jax.outputs import require_folder
    from xpsr_jax.weights import checkpoint
    from xpsr_jax.weights.xpsr_convert import read_official

    require_folder(args.ckpt, "CKPT")
    _check_out(args.out, [("CKPT", args.ckpt), ("--sd15", args.sd15)], args.overwrite)
    t0 = time.time()
    cfg, params = read_official(args.ckpt)
    extras, meta, tok, _ = _sd15_extras(args.sd15)
    if not extras:
        print("note: no --sd15 given, so the checkpoint holds no VAE or text encoder (enough for the denoiser, "
              "not for super-resolving images)")
    params.update(extras)
    meta.update(unet_config=dataclasses.asdict(cfg), source={"kind": "official", "path": str(args.ckpt)})
    out = checkpoint.save(args.out, params, meta, tokenizer_dir=tok, overwrite=args.overwrite)
    print(f"wrote {out} in {time.time() - t0:.1f} s")
    return 0


def run_to_torch(args) -> int:
    from xpsr_jax.outputs import require_folder
    from xpsr_jax.weights import checkpoint
    from xpsr_jax.weights.xpsr_convert import write_official

    require_folder(args.flax, "FLAX")
    checkpoint.read_meta(args.flax)  # not a Flax checkpoint: named before the output is looked at
    _check_out(args.out, [("FLAX", args.flax)], args.overwrite, [args.out / "unet", args.out / "controlnet"])
    meta, params = checkpoint.load(args.flax, components=("unet", "controlnet"))
    out = write_official(checkpoint.unet_config(meta), params, args.out)
    print(f"wrote {out / 'unet'} and {out / 'controlnet'}")
    return 0

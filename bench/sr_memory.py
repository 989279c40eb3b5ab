"""Memory of each program of the super-resolution pipeline, compiled (not run) for this host's backend.

    python bench/sr_memory.py                          # SD1.5 size, 512² output, batch 1 and 8, fp32 + bf16
    python bench/sr_memory.py --batches 8 --dtypes bfloat16
    python bench/sr_memory.py --target h200            # for an H200, compiled on this host (bench/gpu_target.py)

One JSON line per program and batch: the compiler's memory analysis (arguments, temporaries, outputs, generated
code), its attention kernels and compile seconds. Nothing is allocated: weights and inputs are shapes only, so a
CPU host answers for SD1.5 at batch 8. The programs are the ones ``SRPipeline.run_batch`` calls, untiled: the CLIP
text encoder (four prompts per image), the VAE encoder, the denoise loop (20 steps, CFG) and the VAE decoder.

The kernels are the target's: on CPU every attention is XLA's, which materialises its (rows, heads, Tq, Tk)
score matrix; on a GPU, cuDNN takes the bf16/fp16 calls it accepts and the VAE (fp32) keeps XLA's. ``--target``
compiles for a GPU this host does not have (XLA's deviceless compile; the arguments placed on a compile-only
device and traced under its mesh, so the attention policy sees a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def programs(batch: int, dtype: str, process: int, steps: int):
    """(name, jitted function, abstract arguments) of each program of one pipeline call."""
    import jax
    import jax.numpy as jnp

    from xpsr_jax.infer.denoise import Conditions, cached_loop
    from xpsr_jax.infer.pipeline import _text_fn
    from xpsr_jax.infer.vae_tiles import _plain_fn
    from xpsr_jax.models.clip_text import SD15_TEXT_CONFIG, ClipTextModel, init_shapes
    from xpsr_jax.models.config import UNetConfig
    from xpsr_jax.models.vae import AutoencoderKL, abstract_params
    from xpsr_jax.models.vae_config import SD15
    from xpsr_jax.models.xpsr import XPSR

    f32 = jnp.float32
    compute = jnp.bfloat16 if dtype == "bfloat16" else f32
    shape = lambda s, d=f32: jax.ShapeDtypeStruct(s, d)  # noqa: E731
    h = w = process // SD15.downsample_factor
    unet = UNetConfig()
    model = XPSR(unet, dtype=None if dtype == "float32" else compute)
    denoiser = jax.tree.map(lambda a: shape(a.shape, compute), model.abstract_params())
    vae = AutoencoderKL(SD15, dtype=f32)
    vae_params = abstract_params(SD15)
    text = ClipTextModel(SD15_TEXT_CONFIG)
    d = unet.cross_attention_dim
    conds = Conditions(lr=shape((batch, process, process, 3)), e_high=shape((batch, 2, 77, d)),
                       e_low=shape((batch, 2, 77, d)), guidance_scale=shape(()), conditioning_scale=shape(()))
    keys = jax.ShapeDtypeStruct((batch,), jax.random.key(0).dtype)
    return [
        ("text_encoder", _text_fn(text), (init_shapes(SD15_TEXT_CONFIG), shape((4 * batch, 77), jnp.int32))),
        ("vae_encode", _plain_fn(vae, "encode"), (vae_params, shape((batch, process, process, 3)))),
        ("denoise", cached_loop(model, "ddpm", steps, 0.0), (denoiser, shape((batch, h, w, 4)), conds, keys)),
        ("vae_decode", _plain_fn(vae, "decode"), (vae_params, shape((batch, h, w, 4)))),
    ]


DTYPE_FREE = ("text_encoder", "vae_encode", "vae_decode")


def measure(name, fn, args, mesh=None) -> dict:
    import jax

    from xpsr_jax.nn import attention

    if mesh is not None:  # every argument on the mesh's (compile-only) device, replicated
        on_mesh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on_mesh), args)
    t0 = time.perf_counter()
    with attention.recording() as log, jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        lowered = fn.lower(*args)
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    kernels: dict[str, int] = {}
    for c in log:
        key = f"{c.impl}:{c.q_len}->{c.kv_len}:h{c.heads}"
        kernels[key] = kernels.get(key, 0) + 1
    gib = lambda b: round(b / 2**30, 2)  # noqa: E731
    return {"program": name, "compile_s": round(seconds, 1), "attention": kernels,
            "argument_gib": gib(m.argument_size_in_bytes), "temp_gib": gib(m.temp_size_in_bytes),
            "output_gib": gib(m.output_size_in_bytes), "code_mib": round(m.generated_code_size_in_bytes / 2**20, 1),
            "peak_gib": gib(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
                            - m.alias_size_in_bytes)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16"))
    p.add_argument("--process-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--only", nargs="+", help="program names to compile (default: all four)")
    p.add_argument("--target", choices=("h200",),
                   help="compile for this GPU instead of this host's backend (needs the CUDA plugin: bench/gpu_target.py)")
    args = p.parse_args()
    mesh = None
    if args.target:
        import gpu_target

        gpu_target.prepare_environment()
        mesh = gpu_target.mesh(args.target)
    device = common.device_facts()
    if mesh is not None:
        device = {"jax": device["jax"]} | gpu_target.facts(mesh)
    done = set()
    for dtype in args.dtypes:
        for batch in args.batches:
            for name, fn, fn_args in programs(batch, dtype, args.process_size, args.steps):
                # the text encoder and the VAE run in fp32 whatever --dtype says: one line per batch for them
                key = (name, batch) if name in DTYPE_FREE else (name, batch, dtype)
                if (args.only and name not in args.only) or key in done:
                    continue
                done.add(key)
                line = {"what": "sr_memory", "batch": batch, "dtype": dtype, "process_px": args.process_size,
                        "steps": args.steps} | measure(name, fn, fn_args, mesh) | device
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

"""A training run's checkpoint -> an ``xpsr-jax convert``-style Flax checkpoint (and from there to PyTorch).

The run's own saved config rebuilds the networks, the state is restored on this machine's devices, trainable and
frozen weights are merged back and written in fp32, so ``XPSRDenoiser``, ``xpsr-jax sr`` and
``xpsr-jax convert to-torch`` read the result. ``workdir`` and the outputs may be ``gs://`` prefixes: the run is
restored from the bucket, and a bucket output is written to a local folder first and uploaded with ``xpsr.json``
last, so a folder without it (an interrupted upload) is never taken for a checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xpsr_jax import paths
from xpsr_jax.train import partition
from xpsr_jax.train.checkpoints import RunCheckpoints
from xpsr_jax.train.trainer import plan_state
from xpsr_jax.weights import checkpoint


def export_run(workdir: str | os.PathLike, out: str | os.PathLike, step: int | None = None,
               overwrite: bool = False) -> paths.AnyPath:
    ckpts = RunCheckpoints(paths.as_path(workdir) / "checkpoints", save_every=0, keep=1_000_000)
    try:
        config = ml_collections.ConfigDict(ckpts.saved_config(step))
        n = len(jax.devices())
        # the run's mesh may not fit this machine: lay the state out over whatever devices are here
        mesh = partition.make_mesh((("data", 1), ("fsdp", n)))
        plan = plan_state(config, mesh)
        step, state = ckpts.restore_state(plan.abstract_state, step)
    finally:
        ckpts.close()
    params = partition.merge(state.trainable, state.frozen)
    params = jax.tree.map(lambda a: np.asarray(jnp.asarray(a, jnp.float32)), params)
    nets = plan.nets
    meta = {
        "unet_config": dataclasses.asdict(nets.xpsr.config),
        "vae_config": dataclasses.asdict(nets.vae.config),
        "text_encoder_config": dataclasses.asdict(nets.text.config),
        "source": {"kind": "training run", "path": str(workdir), "step": int(step)},
        "training": {"highlevel_prompt": config.model.highlevel_prompt},
    }
    return save_flax(out, params, meta, overwrite=overwrite)


def save_flax(out: str | os.PathLike, params: dict, meta: dict, overwrite: bool = False) -> paths.AnyPath:
    """``checkpoint.save`` to a local folder or a gs:// prefix (staged locally, ``xpsr.json`` uploaded last)."""
    out = paths.as_path(out)
    if isinstance(out, Path):
        return checkpoint.save(out, params, meta, overwrite=overwrite)
    if out.exists():
        if not overwrite:
            raise checkpoint.CheckpointError(f"{out} exists; pass overwrite to replace it")
        out.rmtree()
    with tempfile.TemporaryDirectory(prefix="xpsr-export-") as tmp:
        local = checkpoint.save(Path(tmp) / "flax", params, meta)
        paths.upload_tree(local, out, last=(checkpoint.META,))
    return out


def save_torch(flax_dir: str | os.PathLike, out: str | os.PathLike) -> paths.AnyPath:
    """A Flax checkpoint (local or gs://) -> ``OUT/{unet,controlnet}`` in the official PyTorch layout, written
    locally or uploaded to a gs:// prefix (each component's ``config.json`` last)."""
    from xpsr_jax.weights.xpsr_convert import write_official

    meta, params = checkpoint.load(flax_dir, components=("unet", "controlnet"))
    with paths.local_output(out, last=("unet/config.json", "controlnet/config.json")) as local:
        write_official(checkpoint.unet_config(meta), params, local)
    return paths.as_path(out)

"""A training run's checkpoint -> an ``xpsr-jax convert``-style Flax checkpoint (and from there to PyTorch).

The run's own saved config rebuilds the networks, the state is restored on this machine's devices, trainable and
frozen weights are merged back and written in fp32, so ``XPSRDenoiser``, ``xpsr-jax sr`` and
``xpsr-jax convert to-torch`` read the result.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xpsr_jax.train import partition
from xpsr_jax.train.checkpoints import RunCheckpoints
from xpsr_jax.train.trainer import plan_state
from xpsr_jax.weights import checkpoint


def export_run(workdir: str | Path, out: str | Path, step: int | None = None, overwrite: bool = False) -> Path:
    ckpts = RunCheckpoints(Path(workdir) / "checkpoints", save_every=0, keep=1_000_000)
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
    return checkpoint.save(out, params, meta, overwrite=overwrite)

"""Sampling during training: every ``validate_every`` steps, super-resolve a few LR images with the current weights.

Writes ``WORKDIR/validation/step_NNNNNNN/NAME.png`` and logs the images to TensorBoard. Every process joins the
gather of the sharded weights; process 0 samples and writes.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from xpsr_jax.train.partition import merge


class Validator:
    def __init__(self, config, workdir: Path, nets):
        v = config.validation
        self.every = config.validate_every
        self.out = workdir / "validation"
        self.nets = nets
        self.settings = dict(steps=v.steps, process_size=v.process_size, upscale=v.upscale, seed=config.seed)
        self.images: list[tuple[str, np.ndarray]] = []
        if self.every > 0:
            from xpsr_jax.data.images import list_images, load_rgb_uint8

            if not v.lr_dir:
                raise ValueError("validate_every > 0 needs config.validation.lr_dir (a folder of LR images)")
            files = list_images(Path(v.lr_dir))[: v.max_images]
            if not files:
                raise ValueError(f"no images in config.validation.lr_dir={v.lr_dir}")
            self.images = [(Path(f).stem, load_rgb_uint8(f)) for f in files]
        self._pipe = None

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def run(self, step: int, state, writer=None) -> Path | None:
        params = merge(state.trainable, state.frozen)
        params = multihost_utils.process_allgather(params, tiled=True)  # whole arrays on every host
        if jax.process_index() != 0:
            return None
        params = jax.tree.map(lambda a: np.asarray(jnp.asarray(a, jnp.float32)), params)
        pipe = self._pipeline(params)
        from PIL import Image

        from xpsr_jax.files import atomic_open

        out = self.out / f"step_{step:07d}"
        out.mkdir(parents=True, exist_ok=True)
        results = pipe.super_resolve([im for _, im in self.images], image_ids=[n for n, _ in self.images])
        for (name, _), res in zip(self.images, results):
            with atomic_open(out / f"{name}.png", "wb") as f:
                Image.fromarray(res.image).save(f, format="PNG")
            if writer is not None:
                writer.add_image(f"validation/{name}", res.image, step, dataformats="HWC")
        return out

    def _pipeline(self, params):
        from xpsr_jax.data.tokenizer import ClipTokenizer
        from xpsr_jax.infer.pipeline import SRPipeline
        from xpsr_jax.infer.settings import SRSettings

        if self._pipe is None:
            self._pipe = SRPipeline(self.nets.xpsr.config, self.nets.vae.config, self.nets.text.config, params,
                                    ClipTokenizer.load(None), SRSettings(**self.settings))
        else:  # same compiled functions, new weights
            self._pipe = self._pipe.with_params(params)
        return self._pipe

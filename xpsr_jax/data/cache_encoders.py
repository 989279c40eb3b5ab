"""The frozen encoders of ``make-data --cache-latents``: the VAE encoder and the CLIP text encoder of a Flax
checkpoint (``xpsr-jax convert``), jitted once, run in fixed-size batches on the default device.

What is cached is what the train step would compute with the same weights: the VAE posterior of the HR crop exactly
as the input pipeline scales it (``uint8 / 127.5 - 1``), kept as moments so each step still draws its own sample,
and the text encoder's last hidden state of each prompt tokenised to 77 CLIP ids. Both are computed in fp32 and
stored in bfloat16 by their writers (``records.encode_moments``, ``embeddings.write_part``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xpsr_jax.data.tokenizer import ClipTokenizer
from xpsr_jax.models.clip_text import ClipTextConfig, ClipTextModel
from xpsr_jax.models.vae import AutoencoderKL
from xpsr_jax.models.vae_config import VAEConfig
from xpsr_jax.weights import checkpoint


class CacheEncoders:
    """``moments(images)`` and ``embed(texts)``; ``batch_size`` images or texts per device call (the last batch is
    padded, so each encoder compiles once)."""

    def __init__(self, vae_config: VAEConfig, vae_params, text_config: ClipTextConfig, text_params,
                 tokenizer: ClipTokenizer, batch_size: int = 16, source: str = ""):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.vae_config, self.text_config, self.tokenizer = vae_config, text_config, tokenizer
        self.batch_size, self.source = batch_size, source
        self._vae_params = jax.device_put(vae_params)
        self._text_params = jax.device_put(text_params)
        vae, text = AutoencoderKL(vae_config), ClipTextModel(text_config)

        @jax.jit
        def moments(params, images_u8):
            x = images_u8.astype(jnp.float32) / 127.5 - 1.0  # the input pipeline's scaling of the HR image
            post = vae.apply({"params": params}, x, method=AutoencoderKL.encode)
            return jnp.concatenate([post.mean, post.logvar], axis=-1)

        self._moments = moments
        self._embed = jax.jit(lambda params, ids: text.apply({"params": params}, ids))

    @classmethod
    def load(cls, weights: str | Path, batch_size: int = 16) -> "CacheEncoders":
        """The VAE, text encoder and tokenizer (its ``tokenizer/`` folder, else the bundled CLIP vocabulary) of a
        Flax checkpoint folder; raises ``checkpoint.CheckpointError`` naming what it lacks."""
        meta = checkpoint.read_meta(weights)
        for key, what in (("vae_config", "VAE"), ("text_encoder_config", "text encoder")):
            if key not in meta:
                raise checkpoint.CheckpointError(f"{weights} holds no {what}; convert it with --sd15 SD1.5_FOLDER")
        _, params = checkpoint.load(weights, components=("vae", "text_encoder"))
        tok_dir = Path(weights) / "tokenizer"
        tokenizer = ClipTokenizer.load(tok_dir if tok_dir.is_dir() else None)
        return cls(VAEConfig(**_tuples(meta["vae_config"])), params["vae"],
                   ClipTextConfig.from_dict(meta["text_encoder_config"]), params["text_encoder"], tokenizer,
                   batch_size, str(Path(weights).resolve()))

    def describe(self) -> dict:
        """What made the cache (stored beside it)."""
        return {"weights": self.source, "vae_config": dataclasses.asdict(self.vae_config),
                "text_encoder_config": dataclasses.asdict(self.text_config)}

    def moments(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """HR crops, each (H, W, 3) uint8 of one size -> posterior moments (N, H/8, W/8, 2C) float32: mean, then
        log-variance (clipped as the posterior clips it)."""
        return self._batched(self._moments, self._vae_params, np.stack([np.asarray(im) for im in images]))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Prompts -> last hidden states (N, 77, width) float32."""
        return self._batched(self._embed, self._text_params, self.tokenizer(list(texts)))

    def _batched(self, fn, params, inputs: np.ndarray) -> np.ndarray:
        out, b = [], self.batch_size
        for start in range(0, len(inputs), b):
            chunk = inputs[start:start + b]
            n = len(chunk)
            if n < b:  # same shape every call: one compiled program
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, axis=0)])
            out.append(np.asarray(fn(params, chunk), np.float32)[:n])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


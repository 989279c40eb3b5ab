"""The networks a training run needs, built from the run config: XPSR (ControlNet + UNet), VAE, CLIP text encoder."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from xpsr_jax.models.clip_text import ClipTextConfig, ClipTextModel
from xpsr_jax.models.config import UNetConfig
from xpsr_jax.models.vae import AutoencoderKL
from xpsr_jax.models.vae_config import VAEConfig
from xpsr_jax.models.xpsr import XPSR, ZERO_INIT_MODULES
from xpsr_jax.nn.attention import DEFAULT_SPLASH_MIN_LENGTH, AttentionImpl
from xpsr_jax.nn.init import fresh_params

SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5)


@dataclasses.dataclass(frozen=True)
class Networks:
    xpsr: XPSR
    vae: AutoencoderKL
    text: ClipTextModel

    @property
    def vae_config(self) -> VAEConfig:
        return self.vae.config

    def _init_boxed(self, rng: jax.Array) -> dict[str, Any]:
        r1, r2, r3 = jax.random.split(rng, 3)
        p = self.xpsr.init(r1, boxed=True)
        p["vae"] = self.vae.init(r2, jnp.zeros((1, 16, 16, self.vae.config.in_channels), jnp.float32))["params"]
        p["text_encoder"] = self.text.init(r3, jnp.zeros((1, 77), jnp.int32))["params"]
        return p

    @functools.cached_property
    def _abstract_boxed(self) -> dict[str, Any]:
        # tracing every initialiser takes seconds (3-4 s for the tiny model on 2 cores); a run asks twice
        return jax.eval_shape(self._init_boxed, jax.random.key(0))

    def abstract_params(self, boxed: bool = True) -> dict[str, Any]:
        """{"unet", "controlnet", "vae", "text_encoder"}: shapes only, with logical axis metadata when boxed.
        A new tree on each call (its leaves are immutable shape records), so callers may change it."""
        out = self._abstract_boxed
        return jax.tree.map(lambda x: x, out, is_leaf=lambda x: isinstance(x, nn.Partitioned)) if boxed \
            else nn.unbox(out)

    def fresh_params(self, seed: int) -> dict[str, Any]:
        """Random parameters for every network on the host (tests, demo; real runs start from converted SD1.5)."""
        return fresh_params(self.abstract_params(boxed=False), seed, ZERO_INIT_MODULES)


def unet_config(model_cfg: ml_collections.ConfigDict) -> UNetConfig:
    over = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(model_cfg.unet).items()}
    return UNetConfig(**over).replace(fusion=model_cfg.fusion, pixel_dfc=model_cfg.pixel_dfc,
                                      latent_dfc=model_cfg.latent_dfc)


def vae_config(model_cfg: ml_collections.ConfigDict) -> VAEConfig:
    over = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(model_cfg.vae).items()}
    return VAEConfig(**over)


def text_config(model_cfg: ml_collections.ConfigDict) -> ClipTextConfig:
    return ClipTextConfig.from_dict({**SD15_TEXT, **dict(model_cfg.text_encoder)})


def build(model_cfg: ml_collections.ConfigDict, compute_dtype: str) -> Networks:
    dtype = jnp.dtype(compute_dtype)
    text_cfg = text_config(model_cfg)
    impl = AttentionImpl(model_cfg.attention_impl,
                         model_cfg.get("splash_min_length", DEFAULT_SPLASH_MIN_LENGTH))
    return Networks(
        xpsr=XPSR(unet_config(model_cfg), attention_impl=impl, dtype=dtype, remat=model_cfg.remat),
        vae=AutoencoderKL(vae_config(model_cfg), attention_impl=impl, dtype=dtype),
        text=ClipTextModel(text_cfg, attention_impl=impl, dtype=dtype),
    )

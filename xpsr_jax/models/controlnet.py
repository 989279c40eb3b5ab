"""The XPSR ControlNet: SD1.5 ControlNet + Semantic-Fusion Attention + DFC heads (NHWC).

Inputs: noisy latent (B, h, w, 4), timesteps, high- and low-level prompt embeddings (B, 77, 768), and the LR image
(B, 8h, 8w, 3) in [0, 1]. Returns :class:`ControlNetOutput`. The conditioning embedding ("image encoder") carries the
three pixel-space DFC heads ``to_rgbs``; the 12 + 1 latent-space DFC heads ``conv_degradation[_mid]`` read the
residuals after the zero 1x1 convs and before ``conditioning_scale``.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from xpsr_jax.models import blocks
from xpsr_jax.models.config import UNetConfig
from xpsr_jax.models.unet import block_kwargs, embed_time, make_down_blocks
from xpsr_jax.nn.embeddings import TimestepEmbedding
from xpsr_jax.nn.layers import Conv2d, Dtype


class ControlNetOutput(NamedTuple):
    down_residuals: list[jax.Array]  # 12 maps (B, h_i, w_i, C_i), scaled by conditioning_scale
    mid_residual: jax.Array  # (B, h/8, w/8, C_last), scaled
    latent_dfc: list[jax.Array]  # 13 maps (B, h_i, w_i, 4): one per down residual, then the mid one; [] if off
    rgb_dfc: list[jax.Array]  # 3 maps (B, H/2, W/2, 3), (B, H/4, W/4, 3), (B, H/8, W/8, 3); [] if off


class ConditioningEmbedding(nn.Module):
    """conv_in -> SiLU -> 6 convs (every second one stride 2) each + SiLU -> zero-init conv_out.

    After each stride-2 conv, ``to_rgbs.k`` maps the features to RGB at 1/2, 1/4 and 1/8 of the input size.
    """

    out_channels: int
    channels: tuple[int, ...] = (16, 32, 96, 256)
    rgb_heads: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, cond: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = jax.nn.silu(Conv2d(self.channels[0], name="conv_in", **kw)(cond))
        rgbs = []
        for i in range(len(self.channels) - 1):
            x = jax.nn.silu(Conv2d(self.channels[i], name=f"blocks_{2 * i}", **kw)(x))
            x = jax.nn.silu(Conv2d(self.channels[i + 1], stride=2, name=f"blocks_{2 * i + 1}", **kw)(x))
            if self.rgb_heads:
                rgbs.append(Conv2d(3, name=f"to_rgbs_{i}", **kw)(x))
        return Conv2d(self.out_channels, zero_init=True, name="conv_out", **kw)(x), rgbs


class ControlNet(nn.Module):
    config: UNetConfig
    attention_impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self):
        cfg = self.config
        kw = block_kwargs(cfg, self.attention_impl, self.dtype, self.param_dtype, self.remat)
        pkw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ch = cfg.block_out_channels
        self.conv_in = Conv2d(ch[0], **pkw)
        self.time_embedding = TimestepEmbedding(cfg.time_embed_dim, **pkw)
        self.controlnet_cond_embedding = ConditioningEmbedding(
            ch[0], tuple(cfg.conditioning_embedding_out_channels), cfg.pixel_dfc, **pkw
        )
        self.down_blocks = make_down_blocks(cfg, kw, fusion=cfg.fusion)
        self.mid_block = blocks.UNetMidBlock2DCrossAttn(out_channels=ch[-1], num_layers=1, fusion=cfg.fusion, **kw)
        res_channels = self.residual_channels()
        zero = lambda c, name: Conv2d(c, kernel_size=1, padding=0, zero_init=True, name=name, **pkw)  # noqa: E731
        self.controlnet_down_blocks = [zero(c, f"controlnet_down_blocks_{i}") for i, c in enumerate(res_channels)]
        self.controlnet_mid_block = zero(ch[-1], "controlnet_mid_block")
        if cfg.latent_dfc:
            self.conv_degradation = [
                Conv2d(4, name=f"conv_degradation_{i}_0", **pkw) for i in range(len(res_channels))
            ]
            self.conv_degradation_mid = Conv2d(4, name="conv_degradation_mid_0", **pkw)

    def residual_channels(self) -> list[int]:
        cfg, ch = self.config, self.config.block_out_channels
        out = [ch[0]]
        for i, c in enumerate(ch):
            out += [c] * cfg.layers_per_block
            if i < len(ch) - 1:
                out.append(c)
        return out

    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array,
        e_high: jax.Array,
        e_low: jax.Array | None,
        cond: jax.Array,
        conditioning_scale: float | jax.Array = 1.0,
    ) -> ControlNetOutput:
        cfg = self.config
        emb = embed_time(cfg, self.time_embedding, timesteps, sample.shape[0])
        cond_emb, rgb_dfc = self.controlnet_cond_embedding(cond)
        x = self.conv_in(sample)
        x = x + cond_emb.astype(x.dtype)
        feats = [x]
        for block in self.down_blocks:
            x, outs = block(x, emb, e_high, e_low)
            feats.extend(outs)
        x = self.mid_block(x, emb, e_high, e_low)
        down = [conv(f) for conv, f in zip(self.controlnet_down_blocks, feats)]
        mid = self.controlnet_mid_block(x)
        latent_dfc = []
        if cfg.latent_dfc:
            latent_dfc = [head(r) for head, r in zip(self.conv_degradation, down)]
            latent_dfc.append(self.conv_degradation_mid(mid))
        scale = jnp.asarray(conditioning_scale, jnp.float32)
        down = [r * scale.astype(r.dtype) for r in down]
        mid = mid * scale.astype(mid.dtype)
        return ControlNetOutput(down, mid, latent_dfc, rgb_dfc)

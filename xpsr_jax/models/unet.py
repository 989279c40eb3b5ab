"""The SD1.5 ``UNet2DConditionModel`` in Flax, with XPSR's pixel attentions as an option (NHWC).

Inputs: sample (B, h, w, 4), timesteps (B,) or scalar, text context (B, 77, 768) — the high-level prompt only —
and, as ControlNet feeds them, 12 down residuals and a mid residual (already multiplied by conditioning_scale).
With ``config.pixel_attention`` the decoder layer (i, j) also attends to down residual k = 11 - 3i - j, the residual
of the skip it consumes; that model cannot run without residuals (as the official one).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xpsr_jax.models import blocks
from xpsr_jax.models.config import UNetConfig
from xpsr_jax.nn.embeddings import TimestepEmbedding, timestep_features
from xpsr_jax.nn.layers import Conv2d, Dtype, GroupNorm


def block_kwargs(cfg: UNetConfig, attention_impl: str, dtype, param_dtype, remat: bool = False) -> dict:
    return dict(heads=cfg.attention_head_dim, groups=cfg.norm_num_groups, eps=cfg.norm_eps,
                attention_impl=attention_impl, remat=remat, dtype=dtype, param_dtype=param_dtype)


def make_down_blocks(cfg: UNetConfig, kw: dict, fusion: str) -> list[nn.Module]:
    out = []
    n = len(cfg.block_out_channels)
    for i, (kind, ch) in enumerate(zip(cfg.down_block_types, cfg.block_out_channels)):
        common = dict(out_channels=ch, num_layers=cfg.layers_per_block, add_downsample=i < n - 1, **kw)
        if kind == "CrossAttnDownBlock2D":
            out.append(blocks.CrossAttnDownBlock2D(fusion=fusion, **common))
        else:
            out.append(blocks.DownBlock2D(**common))
    return out


def embed_time(cfg: UNetConfig, time_embedding: nn.Module, timesteps: jax.Array, batch: int) -> jax.Array:
    t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (batch,))
    return time_embedding(timestep_features(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift))


class UNet(nn.Module):
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
        self.down_blocks = make_down_blocks(cfg, kw, fusion="high_only")
        self.mid_block = blocks.UNetMidBlock2DCrossAttn(out_channels=ch[-1], num_layers=1, fusion="high_only", **kw)
        up = []
        rev = list(reversed(ch))
        for i, kind in enumerate(cfg.up_block_types):
            cls = blocks.CrossAttnUpBlock2D if kind == "CrossAttnUpBlock2D" else blocks.UpBlock2D
            up.append(cls(out_channels=rev[i], num_layers=cfg.layers_per_block + 1,
                          add_upsample=i < len(ch) - 1, pixel_attention=cfg.pixel_attention, **kw))
        self.up_blocks = up
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, cfg.norm_eps, **pkw)
        self.conv_out = Conv2d(cfg.out_channels, **pkw)

    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array,
        context: jax.Array,
        down_residuals: Sequence[jax.Array] | None = None,
        mid_residual: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        if cfg.pixel_attention and down_residuals is None:
            raise ValueError("the XPSR UNet (pixel_attention=True) needs the ControlNet's down residuals")
        emb = embed_time(cfg, self.time_embedding, timesteps, sample.shape[0])
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, outs = block(x, emb, context)
            skips.extend(outs)
        if down_residuals is not None:
            if len(down_residuals) != len(skips):
                raise ValueError(f"got {len(down_residuals)} down residuals, the UNet has {len(skips)} skips")
            skips = [s + r.astype(s.dtype) for s, r in zip(skips, down_residuals)]
        x = self.mid_block(x, emb, context)
        if mid_residual is not None:
            x = x + mid_residual.astype(x.dtype)
        residuals = list(down_residuals) if down_residuals is not None else None
        for block in self.up_blocks:
            n = block.num_layers
            block_skips, skips = skips[-n:][::-1], skips[:-n]
            pixel = None
            if cfg.pixel_attention:
                pixel, residuals = residuals[-n:][::-1], residuals[:-n]
            size = skips[-1].shape[1:3] if skips else None
            x = block(x, block_skips, emb, context, pixel, size)
        x = jax.nn.silu(self.conv_norm_out(x))
        return self.conv_out(x)

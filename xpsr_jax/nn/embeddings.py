"""Sinusoidal timestep features and the TimestepEmbedding MLP (diffusers' ``Timesteps`` + ``TimestepEmbedding``)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from xpsr_jax.nn.layers import Dtype, Linear


def timestep_features(t: jax.Array, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                      max_period: float = 10000.0) -> jax.Array:
    """t (B,) -> (B, dim) float32. The timestep stays fp32: in bf16, 999 rounds to 1000."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = jnp.asarray(t, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2."""

    features: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Linear(self.features, name="linear_1", **kw)(x)
        return Linear(self.features, name="linear_2", **kw)(jax.nn.silu(x))

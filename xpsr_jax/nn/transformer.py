"""diffusers' ``Transformer2DModel`` (conv projections) with one ``BasicTransformerBlock``.

Every attention site of SD1.5 and every module XPSR adds (low-level, fusion and pixel attentions) is this block, so
it is written once: GroupNorm(eps 1e-6) -> 1x1 conv proj_in -> tokens -> [LN, self-attn, +] -> [LN, cross-attn on
the context, +] -> [LN, GEGLU feed-forward, +] -> 1x1 conv proj_out -> + input.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xpsr_jax.nn import axes
from xpsr_jax.nn.attention import Attention
from xpsr_jax.nn.layers import Conv2d, Dtype, GroupNorm, LayerNorm, Linear


class GEGLUFeedForward(nn.Module):
    """ff.net.0.proj: Linear C -> 2*4C, value * GELU(gate) with the exact erf GELU; ff.net.2: Linear 4C -> C."""

    mult: int = 4
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        hidden = _NetProj(self.mult * c, name="net_0", **kw)(x)
        return Linear(c, kernel_axes=(axes.MLP, axes.EMBED), name="net_2", **kw)(hidden)


class _NetProj(nn.Module):
    inner: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = Linear(2 * self.inner, name="proj", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        value, gate = jnp.split(h, 2, axis=-1)
        return value * jax.nn.gelu(gate, approximate=False)


class BasicTransformerBlock(nn.Module):
    heads: int
    dim_head: int
    attention_impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = dict(heads=self.heads, dim_head=self.dim_head, impl=self.attention_impl, **kw)
        x = x + Attention(name="attn1", **attn)(LayerNorm(name="norm1", **kw)(x))
        x = x + Attention(name="attn2", **attn)(LayerNorm(name="norm2", **kw)(x), context)
        x = x + GEGLUFeedForward(name="ff", **kw)(LayerNorm(name="norm3", **kw)(x))
        return x


class Transformer2D(nn.Module):
    """x (B, H, W, C), context (B, S, Cc) -> (B, H, W, C). ``heads`` heads of C // heads channels."""

    heads: int
    norm_groups: int = 32
    attention_impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = GroupNorm(self.norm_groups, epsilon=1e-6, name="norm", **kw)(x)
        y = Conv2d(c, kernel_size=1, padding=0, name="proj_in", **kw)(y)
        y = y.reshape(b, h * w, c)
        y = BasicTransformerBlock(
            self.heads, c // self.heads, self.attention_impl, name="transformer_blocks_0", **kw
        )(y, context)
        y = Conv2d(c, kernel_size=1, padding=0, name="proj_out", **kw)(y.reshape(b, h, w, c))
        return y + x


def tokens(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H*W, C) in row-major order, as a context for cross-attention."""
    return x.reshape(x.shape[0], -1, x.shape[-1])

"""diffusers' ResnetBlock2D, Downsample2D and Upsample2D (NHWC)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xpsr_jax.nn.layers import Conv2d, Dtype, GroupNorm, Linear


class ResnetBlock2D(nn.Module):
    """GN -> SiLU -> conv1 (+ time_emb_proj(SiLU(temb))) -> GN -> SiLU -> conv2, + (1x1 conv_shortcut) input.

    x (B, H, W, Cin), temb (B, T) or None (the VAE has no time embedding) -> (B, H, W, out_channels).
    """

    out_channels: int
    groups: int = 32
    eps: float = 1e-5
    use_time_emb: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = jax.nn.silu(GroupNorm(self.groups, self.eps, name="norm1", **kw)(x))
        h = Conv2d(self.out_channels, name="conv1", **kw)(h)
        if self.use_time_emb:
            t = Linear(self.out_channels, name="time_emb_proj", **kw)(jax.nn.silu(temb))
            h = h + t[:, None, None, :].astype(h.dtype)
        h = jax.nn.silu(GroupNorm(self.groups, self.eps, name="norm2", **kw)(h))
        h = Conv2d(self.out_channels, name="conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = Conv2d(self.out_channels, kernel_size=1, padding=0, name="conv_shortcut", **kw)(x)
        return x.astype(h.dtype) + h


class Downsample2D(nn.Module):
    """3x3 stride-2 conv; ``padding`` 1 is PyTorch's symmetric (1, 1); the VAE encoder uses 0 after an
    asymmetric (0, 1) pad of the bottom and right edges."""

    out_channels: int
    padding: int = 1
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = ((1, 1), (1, 1)) if self.padding == 1 else ((0, 1), (0, 1))
        return Conv2d(
            self.out_channels, stride=2, padding=pad, name="conv", dtype=self.dtype, param_dtype=self.param_dtype
        )(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 (or to ``size``), then a 3x3 conv."""

    out_channels: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
        b, h, w, c = x.shape
        if size is None or tuple(size) == (2 * h, 2 * w):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        else:
            # PyTorch 'nearest' picks floor(i * in / out); this differs from jax.image.resize's half-pixel rule.
            rows = (jnp.arange(size[0]) * h) // size[0]
            cols = (jnp.arange(size[1]) * w) // size[1]
            x = x[:, rows][:, :, cols]
        return Conv2d(self.out_channels, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)

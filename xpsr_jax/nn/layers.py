"""Basic layers with PyTorch's numerics, PyTorch's default initialisation and logical axis names.

Why our own instead of ``flax.linen.Conv``/``GroupNorm``: every kernel here must (a) pad exactly like PyTorch (a
stride-2 3x3 conv pads (1, 1), where ``padding="SAME"`` pads (0, 1)); (b) initialise like PyTorch
(``U(+-1/sqrt(fan_in))`` for weight and bias), which XPSR's new layers rely on; (c) compute GroupNorm statistics in
fp32 with the two-pass variance; and (d) carry logical axis names so configs can shard them. Parameter names are
``kernel``/``bias``/``scale``/``embedding``, which the weight key maps rely on.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xpsr_jax.nn import axes

Dtype = Any


def torch_uniform(fan_in: int):
    """PyTorch's default init for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _param(module: nn.Module, name: str, init, shape: Sequence[int], names: Sequence[str | None], dtype):
    return module.param(name, nn.with_logical_partitioning(init, tuple(names)), tuple(shape), dtype)


class Conv2d(nn.Module):
    """NHWC conv with PyTorch padding semantics. Kernel (kh, kw, in, out)."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int | tuple[tuple[int, int], tuple[int, int]] = 1
    use_bias: bool = True
    zero_init: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        fan_in = cin * k * k
        init = nn.initializers.zeros if self.zero_init else torch_uniform(fan_in)
        kernel = _param(self, "kernel", init, (k, k, cin, self.features), axes.CONV_KERNEL, self.param_dtype)
        pad = self.padding
        if isinstance(pad, int):
            pad = ((pad, pad), (pad, pad))
        dtype = self.dtype or x.dtype
        y = jax.lax.conv_general_dilated(
            x.astype(dtype),
            kernel.astype(dtype),
            window_strides=(self.stride, self.stride),
            padding=pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias = _param(self, "bias", init, (self.features,), (axes.CONV_OUT,), self.param_dtype)
            y = y + bias.astype(dtype)
        return y


class Linear(nn.Module):
    """Dense layer acting on the last axis. Kernel (in, out)."""

    features: int
    use_bias: bool = True
    kernel_axes: tuple[str | None, str | None] = axes.DENSE_KERNEL
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        init = torch_uniform(cin)
        kernel = _param(self, "kernel", init, (cin, self.features), self.kernel_axes, self.param_dtype)
        dtype = self.dtype or x.dtype
        y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
        if self.use_bias:
            bias = _param(self, "bias", init, (self.features,), (self.kernel_axes[1],), self.param_dtype)
            y = y + bias.astype(dtype)
        return y


class GroupNorm(nn.Module):
    """PyTorch GroupNorm over NHWC (or N...C) inputs; statistics in fp32, two-pass variance."""

    num_groups: int
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels do not split into {self.num_groups} groups")
        scale = _param(self, "scale", nn.initializers.ones, (c,), (axes.NORM,), self.param_dtype)
        bias = _param(self, "bias", nn.initializers.zeros, (c,), (axes.NORM,), self.param_dtype)
        xf = x.astype(jnp.float32)
        g = xf.reshape(x.shape[0], -1, self.num_groups, c // self.num_groups)
        mean = g.mean(axis=(1, 3), keepdims=True)
        var = jnp.square(g - mean).mean(axis=(1, 3), keepdims=True)
        g = (g - mean) * jax.lax.rsqrt(var + self.epsilon)
        y = g.reshape(x.shape) * scale + bias
        return y.astype(self.dtype or x.dtype)


class LayerNorm(nn.Module):
    """PyTorch LayerNorm over the last axis; statistics in fp32."""

    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = _param(self, "scale", nn.initializers.ones, (c,), (axes.NORM,), self.param_dtype)
        bias = _param(self, "bias", nn.initializers.zeros, (c,), (axes.NORM,), self.param_dtype)
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype or x.dtype)


class Embed(nn.Module):
    """Lookup table (num, features), initialised N(0, 1) like torch.nn.Embedding."""

    num_embeddings: int
    features: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        table = _param(
            self, "embedding", nn.initializers.normal(1.0), (self.num_embeddings, self.features),
            axes.EMBED_TABLE, self.param_dtype,
        )
        return jnp.take(table, ids, axis=0).astype(self.dtype or self.param_dtype)

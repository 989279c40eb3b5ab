"""Multi-head attention and the one place that chooses the attention kernel.

``impl`` is ``"auto"`` (cuDNN flash attention on GPU where it accepts the shapes, XLA otherwise), ``"xla"``
(force the portable kernel), or ``"cudnn"`` (require it; fail if it refuses). cuDNN refuses, among others, fp32
inputs and some key lengths (77-token cross-attention); "auto" then falls back to XLA at trace time, so one model
mixes both kernels: flash for the 4096-token self-attention, XLA for the text cross-attention.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xpsr_jax.nn.layers import Dtype, Linear

IMPLS = ("auto", "xla", "cudnn")


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, impl: str = "auto", is_causal: bool = False
) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v for q (B, Tq, N, D), k and v (B, Tk, N, D) -> (B, Tq, N, D).

    ``is_causal`` lets query i see keys 0..i only (CLIP's text encoder); there is no other mask.
    """
    if impl not in IMPLS:
        raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, implementation="cudnn")
    if impl == "auto" and _cudnn_may_accept(q):
        try:
            return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, implementation="cudnn")
        except Exception:  # noqa: BLE001 - cuDNN's shape/dtype checks raise various types; XLA always works
            pass
    return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, implementation="xla")


def _cudnn_may_accept(q: jax.Array) -> bool:
    return jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)


class Attention(nn.Module):
    """diffusers' ``Attention``: to_q/to_k/to_v (bias only where ``qkv_bias``), to_out.0 with bias.

    x (B, T, C) and optional context (B, S, Cc) -> (B, T, C). Without context this is self-attention.
    """

    heads: int
    dim_head: int
    qkv_bias: bool = False
    impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        inner = self.heads * self.dim_head
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ctx = x if context is None else context
        q = Linear(inner, use_bias=self.qkv_bias, name="to_q", **kw)(x)
        k = Linear(inner, use_bias=self.qkv_bias, name="to_k", **kw)(ctx)
        v = Linear(inner, use_bias=self.qkv_bias, name="to_v", **kw)(ctx)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, self.dim_head)  # noqa: E731
        o = dot_product_attention(split(q), split(k), split(v), self.impl)
        o = o.reshape(x.shape[0], x.shape[1], inner)
        return Linear(x.shape[-1], name="to_out_0", **kw)(o)

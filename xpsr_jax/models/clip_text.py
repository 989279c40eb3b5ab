"""The CLIP text encoder of SD1.5 (transformers' ``CLIPTextModel``) in Flax.

Token ids (B, T<=77) -> token + position embeddings -> N pre-LayerNorm encoder layers (causal self-attention, then
an fc1/activation/fc2 MLP, each with a residual) -> final LayerNorm -> the last hidden state (B, T, hidden), which
is what the UNet cross-attends to. The causal mask matters even though SD reads every position: without it the
states before the EOS token would see the padding after it.

Module names mirror transformers 4's ``CLIPTextModel`` (``text_model.embeddings...``), the spelling of SD1.5's
``text_encoder/`` files. Reading and writing those files (and transformers 5's unprefixed keys) is
:mod:`xpsr_jax.weights.clip_text`'s job.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from xpsr_jax.nn import axes
from xpsr_jax.nn.attention import dot_product_attention
from xpsr_jax.nn.layers import Dtype, Embed, LayerNorm, Linear

# transformers' ACT2FN names -> functions. "gelu" is the exact erf GELU, "gelu_new" the tanh approximation.
_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class ClipTextConfig:
    """The architecture fields of a transformers ``CLIPTextConfig``; the defaults are SD1.5's text encoder."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"CLIP text: hidden_act {self.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"CLIP text: hidden_size {self.hidden_size} does not split into {self.num_attention_heads} heads"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClipTextConfig":
        """From a transformers ``config.json`` dict; fields that do not shape the encoder are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers' ``CLIPTextModel.from_pretrained`` reads."""
        return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **dataclasses.asdict(self)}


SD15_TEXT_CONFIG = ClipTextConfig()


class ClipAttention(nn.Module):
    """Causal multi-head self-attention with biased q/k/v/out projections: (B, T, C) -> (B, T, C)."""

    config: ClipTextConfig
    attention_impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, t, c = x.shape

        def heads(name: str) -> jax.Array:
            return Linear(c, name=name, **kw)(x).reshape(b, t, cfg.num_attention_heads, cfg.head_dim)

        # dot_product_attention scales by 1/sqrt(head_dim), as CLIPAttention does.
        q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
        o = dot_product_attention(q, k, v, self.attention_impl, is_causal=True)
        return Linear(c, name="out_proj", **kw)(o.reshape(b, t, c))


class ClipMlp(nn.Module):
    """fc1 (C -> intermediate), activation, fc2 (intermediate -> C)."""

    config: ClipTextConfig
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = Linear(cfg.intermediate_size, name="fc1", **kw)(x)
        h = _ACTIVATIONS[cfg.hidden_act](h)
        return Linear(cfg.hidden_size, kernel_axes=(axes.MLP, axes.EMBED), name="fc2", **kw)(h)


class ClipEncoderLayer(nn.Module):
    """Pre-LN block: x + attn(LN1(x)), then x + mlp(LN2(x)). (B, T, C) -> (B, T, C)."""

    config: ClipTextConfig
    attention_impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        eps = self.config.layer_norm_eps
        h = LayerNorm(epsilon=eps, name="layer_norm1", **kw)(x)
        x = x + ClipAttention(self.config, self.attention_impl, name="self_attn", **kw)(h)
        h = LayerNorm(epsilon=eps, name="layer_norm2", **kw)(x)
        return x + ClipMlp(self.config, name="mlp", **kw)(h)


class ClipTextEmbeddings(nn.Module):
    """ids (B, T) int -> token_embedding[ids] + position_embedding[0..T-1], (B, T, C)."""

    config: ClipTextConfig
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        t = ids.shape[-1]
        if t > cfg.max_position_embeddings:
            raise ValueError(f"CLIP text: {t} tokens exceed max_position_embeddings {cfg.max_position_embeddings}")
        tok = Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding", **kw)(ids)
        pos = Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position_embedding", **kw)(jnp.arange(t))
        return tok + pos[None]


class ClipEncoder(nn.Module):
    """``num_hidden_layers`` encoder layers, named ``layers_0`` ... like the PyTorch ``layers`` list."""

    config: ClipTextConfig
    attention_impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i in range(self.config.num_hidden_layers):
            x = ClipEncoderLayer(self.config, self.attention_impl, name=f"layers_{i}", **kw)(x)
        return x


class ClipTextTransformer(nn.Module):
    """embeddings -> encoder -> final_layer_norm. ids (B, T) -> last hidden state (B, T, C)."""

    config: ClipTextConfig
    attention_impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ClipTextEmbeddings(self.config, name="embeddings", **kw)(ids)
        x = ClipEncoder(self.config, self.attention_impl, name="encoder", **kw)(x)
        return LayerNorm(epsilon=self.config.layer_norm_eps, name="final_layer_norm", **kw)(x)


class ClipTextModel(nn.Module):
    """transformers' ``CLIPTextModel``: input_ids (B, T<=77) int -> last_hidden_state (B, T, hidden).

    Parameters live under ``text_model/`` as in SD1.5's checkpoint files. There is no attention mask: SD feeds
    fixed-length, EOS-padded ids, and the causal mask already keeps padding out of the states before it.
    """

    config: ClipTextConfig = SD15_TEXT_CONFIG
    attention_impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        return ClipTextTransformer(
            self.config, self.attention_impl, name="text_model", dtype=self.dtype, param_dtype=self.param_dtype
        )(input_ids)


def init_shapes(config: ClipTextConfig, param_dtype: Dtype = jnp.float32) -> dict[str, Any]:
    """The parameter tree as ``jax.ShapeDtypeStruct`` leaves, without allocating anything."""
    model = ClipTextModel(config, param_dtype=param_dtype)
    ids = jax.ShapeDtypeStruct((1, config.max_position_embeddings), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)
    return nn.unbox(variables["params"])

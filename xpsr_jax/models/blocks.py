"""The UNet's down, mid and up blocks, shared by the SD1.5 UNet and the XPSR ControlNet (NHWC).

XPSR's additions live here as options of the stock blocks, so nothing is copied:

* ``fusion`` on the cross-attention blocks (ControlNet): ``parallel`` adds ``attentions_lowlevel`` and
  ``attentions_connect`` beside every ``attentions`` (Semantic-Fusion Attention), ``sequential`` adds only
  ``attentions_lowlevel`` applied after the high-level one, ``high_only`` is the stock block.
* ``pixel_attention`` on the up blocks (UNet): a ``pixel_attentions`` Transformer2D per layer whose keys and values
  are the ControlNet residual of the skip that layer consumes.

Block attributes mirror diffusers' module names so parameter paths match the PyTorch keys.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xpsr_jax.nn.axes import constrain_batch
from xpsr_jax.nn.layers import Dtype
from xpsr_jax.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from xpsr_jax.nn.transformer import Transformer2D, tokens


class _Block(nn.Module):
    """Fields every block shares."""

    out_channels: int = 0
    num_layers: int = 1
    heads: int = 8
    groups: int = 32
    eps: float = 1e-5
    attention_impl: str = "auto"
    remat: bool = False  # recompute each ResNet / Transformer2D in the backward pass instead of storing it
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def _kw(self):
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def _resnet(self, out_channels: int | None = None) -> ResnetBlock2D:
        cls = nn.remat(ResnetBlock2D) if self.remat else ResnetBlock2D
        return cls(out_channels or self.out_channels, self.groups, self.eps, **self._kw())

    def _t2d(self) -> Transformer2D:
        cls = nn.remat(Transformer2D) if self.remat else Transformer2D
        return cls(self.heads, self.groups, self.attention_impl, **self._kw())


class _FusionMixin:
    """Semantic-Fusion Attention over ``attentions`` / ``attentions_lowlevel`` / ``attentions_connect``.

    The using block declares the ``fusion`` field.
    """

    def _make_fusion(self, n: int) -> None:
        self.attentions = [self._t2d() for _ in range(n)]
        if self.fusion in ("parallel", "sequential"):
            self.attentions_lowlevel = [self._t2d() for _ in range(n)]
        if self.fusion == "parallel":
            self.attentions_connect = [self._t2d() for _ in range(n)]

    def _cross_attend(self, j: int, x: jax.Array, e_high: jax.Array, e_low: jax.Array | None) -> jax.Array:
        h = self.attentions[j](x, e_high)
        if e_low is None or self.fusion == "high_only":
            return h
        if self.fusion == "sequential":
            return self.attentions_lowlevel[j](h, e_low)
        # parallel: both prompt attentions read the same x; the fusion attention queries the high-level result
        # with keys/values from the low-level result's tokens.
        low = self.attentions_lowlevel[j](x, e_low)
        return self.attentions_connect[j](h, tokens(low))


class CrossAttnDownBlock2D(_Block, _FusionMixin):
    add_downsample: bool = True
    fusion: str = "high_only"

    def setup(self):
        self.resnets = [self._resnet() for _ in range(self.num_layers)]
        self._make_fusion(self.num_layers)
        if self.add_downsample:
            self.downsamplers = [Downsample2D(self.out_channels, **self._kw())]

    def __call__(self, x, temb, e_high, e_low=None) -> tuple[jax.Array, list[jax.Array]]:
        outs = []
        for j in range(self.num_layers):
            x = constrain_batch(self._cross_attend(j, self.resnets[j](x, temb), e_high, e_low))
            outs.append(x)
        if self.add_downsample:
            x = self.downsamplers[0](x)
            outs.append(x)
        return x, outs


class DownBlock2D(_Block):
    add_downsample: bool = True

    def setup(self):
        self.resnets = [self._resnet() for _ in range(self.num_layers)]
        if self.add_downsample:
            self.downsamplers = [Downsample2D(self.out_channels, **self._kw())]

    def __call__(self, x, temb, e_high=None, e_low=None) -> tuple[jax.Array, list[jax.Array]]:
        outs = []
        for resnet in self.resnets:
            x = constrain_batch(resnet(x, temb))
            outs.append(x)
        if self.add_downsample:
            x = self.downsamplers[0](x)
            outs.append(x)
        return x, outs


class UNetMidBlock2DCrossAttn(_Block, _FusionMixin):
    """resnet 0 -> (fused) attention -> resnet 1."""

    num_layers: int = 1
    fusion: str = "high_only"

    def setup(self):
        self.resnets = [self._resnet() for _ in range(self.num_layers + 1)]
        self._make_fusion(self.num_layers)

    def __call__(self, x, temb, e_high, e_low=None) -> jax.Array:
        x = self.resnets[0](x, temb)
        for j in range(self.num_layers):
            x = self.resnets[j + 1](self._cross_attend(j, x, e_high, e_low), temb)
        return x


class UpBlock2D(_Block):
    """Pops one skip per layer (last first), concat -> resnet [-> text attention] [-> pixel attention]."""

    add_upsample: bool = True
    pixel_attention: bool = False
    has_text_attention = False

    def setup(self):
        self.resnets = [self._resnet() for _ in range(self.num_layers)]
        if self.has_text_attention:
            self.attentions = [self._t2d() for _ in range(self.num_layers)]
        if self.pixel_attention:
            self.pixel_attentions = [self._t2d() for _ in range(self.num_layers)]
        if self.add_upsample:
            self.upsamplers = [Upsample2D(self.out_channels, **self._kw())]

    def __call__(
        self,
        x: jax.Array,
        skips: Sequence[jax.Array],
        temb: jax.Array,
        e_high: jax.Array | None = None,
        pixel_contexts: Sequence[jax.Array] | None = None,
        upsample_size: tuple[int, int] | None = None,
    ) -> jax.Array:
        """``skips`` and ``pixel_contexts`` in the order they are consumed (the last skip of the encoder first)."""
        if len(skips) != self.num_layers:
            raise ValueError(f"{self.name}: got {len(skips)} skips for {self.num_layers} layers")
        if self.pixel_attention and (pixel_contexts is None or len(pixel_contexts) != self.num_layers):
            raise ValueError(f"{self.name}: pixel attention needs {self.num_layers} ControlNet residuals")
        for j in range(self.num_layers):
            x = jnp.concatenate([x, skips[j].astype(x.dtype)], axis=-1)
            x = self.resnets[j](x, temb)
            if self.has_text_attention:
                x = self.attentions[j](x, e_high)
            if self.pixel_attention:
                x = self.pixel_attentions[j](x, tokens(pixel_contexts[j]))
            x = constrain_batch(x)
        if self.add_upsample:
            x = self.upsamplers[0](x, upsample_size)
        return x


class CrossAttnUpBlock2D(UpBlock2D):
    has_text_attention = True

"""XPSR's UNet and ControlNet as stock diffusers modules plus the XPSR additions, with the official key names.

Each model builds the stock diffusers class from the config, adopts its submodules under their own names (so the
state dict has exactly the stock keys) and attaches the XPSR modules where the official code has them:

* UNet: ``up_blocks.{i}.pixel_attentions.{j}`` — one Transformer2D per decoder layer whose keys/values are the
  ControlNet residual that layer's skip connection carries.
* ControlNet: ``attentions_lowlevel`` / ``attentions_connect`` beside ``attentions`` in every cross-attention down
  block and the mid block (Semantic-Fusion Attention), ``controlnet_cond_embedding.to_rgbs`` (pixel DFC heads),
  ``conv_degradation.{i}.0`` / ``conv_degradation_mid.0`` (latent DFC heads).

The stock ``forward`` methods know nothing of these, so both models walk the modules themselves; stock blocks that
XPSR leaves unchanged (UNet encoder and mid block, plain down blocks) are called as they are. All tensors NCHW.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from xpsr_jax.torch_ref import config as C


class ControlNetOutputs(NamedTuple):
    latent_dfc: list[torch.Tensor]  # 13 maps (B, 4, h_i, w_i): one per down residual, then the mid one; [] if off
    rgb_dfc: list[torch.Tensor]  # 3 maps (B, 3, H/2, W/2), (B, 3, H/4, W/4), (B, 3, H/8, W/8); [] if off
    down_residuals: list[torch.Tensor]  # 12 maps (B, C_i, h_i, w_i), times conditioning_scale
    mid_residual: torch.Tensor  # (B, C_last, h/8, w/8), times conditioning_scale


def transformer2d(channels: int, heads: int, cross_dim: int, config: Mapping[str, Any]) -> Transformer2DModel:
    """T2D(C, X): the stock block-level Transformer2D geometry (``heads`` heads of C/heads, one transformer block,
    GroupNorm with the config's groups) attending to a context of width ``cross_dim``."""
    return Transformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=channels // heads,
        in_channels=channels,
        num_layers=1,
        cross_attention_dim=cross_dim,
        norm_num_groups=config.get("norm_num_groups", 32),
        use_linear_projection=config.get("use_linear_projection", False),
        upcast_attention=config.get("upcast_attention", False),
    )


def tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C), row-major like Transformer2D's own flattening."""
    return x.flatten(2).transpose(1, 2)


def _adopt(owner: nn.Module, stock: nn.Module) -> None:
    """Register ``stock``'s submodules on ``owner`` under the same names, so the keys carry no prefix."""
    for name, child in stock.named_children():
        owner.add_module(name, child)


def _attend(t2d: nn.Module, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    return t2d(x, encoder_hidden_states=context, return_dict=False)[0]


def _time_embedding(model: nn.Module, timestep, sample: torch.Tensor) -> torch.Tensor:
    """Sinusoidal projection + MLP of the timestep(s), broadcast to the batch -> (B, 4*C_0)."""
    t = torch.as_tensor(timestep, device=sample.device)
    if t.ndim == 0:
        t = t[None]
    t = t.expand(sample.shape[0])
    # time_proj always computes in fp32; the MLP runs in the model's dtype.
    return model.time_embedding(model.time_proj(t).to(sample.dtype))


class XPSRUNet(nn.Module):
    """SD1.5 UNet with XPSR pixel attentions in the decoder.

    ``config``: an official XPSR ``unet/config.json`` dict (``self.config`` is the official dict to write back).
    """

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.pixel_attention = C.unet_switches(config)
        stock = UNet2DConditionModel(**C.stock_unet_kwargs(config))
        _adopt(self, stock)
        self.config = C.official_unet_config(stock.config, self.pixel_attention)
        if self.pixel_attention:
            self._attach_pixel_attentions()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "XPSRUNet":
        return cls(config)

    def _attach_pixel_attentions(self) -> None:
        cfg = self.config
        rev = list(reversed(cfg["block_out_channels"]))
        heads = list(reversed(C.heads_per_block(cfg)))
        for i, block in enumerate(self.up_blocks):
            out_ch, in_ch = rev[i], rev[min(i + 1, len(rev) - 1)]
            n = len(block.resnets)
            # Layer j consumes the skip (and ControlNet residual) of width in_ch for the last layer, out_ch before.
            block.pixel_attentions = nn.ModuleList(
                transformer2d(out_ch, heads[i], in_ch if j == n - 1 else out_ch, cfg) for j in range(n)
            )

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        e_high: torch.Tensor,
        down_residuals: Sequence[torch.Tensor],
        mid_residual: torch.Tensor,
    ) -> torch.Tensor:
        """Noise prediction.

        sample (B, 4, h, w); timestep scalar or (B,); e_high (B, L, X) high-level prompt embedding (the UNet never
        sees the low-level prompt); down_residuals: the ControlNet's 12 residuals (B, C_k, h_k, w_k), already
        scaled; mid_residual (B, C_last, h/8, w/8). -> eps (B, 4, h, w).
        """
        emb = _time_embedding(self, timestep, sample)
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, outs = block(x, emb, encoder_hidden_states=e_high)
            else:
                x, outs = block(x, emb)
            skips.extend(outs)
        if len(down_residuals) != len(skips):
            raise ValueError(f"got {len(down_residuals)} down residuals for {len(skips)} UNet skips")
        skips = [s + r for s, r in zip(skips, down_residuals)]
        x = self.mid_block(x, emb, encoder_hidden_states=e_high) + mid_residual

        contexts = list(down_residuals)
        # Like the stock UNet: pass the skip's size to the upsampler only when the latent is not a multiple of it.
        factor = 2 ** sum(b.upsamplers is not None for b in self.up_blocks)
        forward_size = any(s % factor for s in sample.shape[-2:])
        for block in self.up_blocks:
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            block_contexts, contexts = contexts[-n:], contexts[:-n]
            size = skips[-1].shape[2:] if forward_size and skips else None
            # Layers pop from the end: layer j of up block i gets residual k = (last index) - 3i - j.
            x = self._up_block(block, x, emb, e_high, block_skips[::-1], block_contexts[::-1], size)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))

    def _up_block(self, block, x, emb, e_high, skips, contexts, size) -> torch.Tensor:
        """concat skip -> resnet -> [text attention on e_high] -> [pixel attention on the residual], per layer."""
        text = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            x = resnet(torch.cat([x, skips[j]], dim=1), emb)
            if text is not None:
                x = _attend(text[j], x, e_high)
            if self.pixel_attention:
                x = _attend(block.pixel_attentions[j], x, tokens(contexts[j]))
        if block.upsamplers is not None:
            for up in block.upsamplers:
                x = up(x, size)
        return x


class XPSRControlNet(nn.Module):
    """SD1.5 ControlNet with Semantic-Fusion Attention and the pixel / latent DFC heads.

    ``config``: an official XPSR ``controlnet/config.json`` dict (``self.config`` is the official dict to write).
    """

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.switches = C.controlnet_switches(config)
        stock = ControlNetModel(**C.stock_controlnet_kwargs(config))
        _adopt(self, stock)
        self.config = C.official_controlnet_config(stock.config, self.switches)
        if self.switches.fusion != "high_only":
            self._attach_fusion()
        if self.switches.pixel_dfc:
            self._attach_rgb_heads()
        if self.switches.latent_dfc:
            self._attach_latent_heads()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "XPSRControlNet":
        return cls(config)

    @property
    def fusion(self) -> str:
        return self.switches.fusion

    def _attach_fusion(self) -> None:
        """attentions_lowlevel: T2D(C, X) on the low-level prompt; attentions_connect: T2D(C, C) on its tokens."""
        for block in [*self.down_blocks, self.mid_block]:
            high = getattr(block, "attentions", None)
            if high is None:
                continue
            # Geometry read off the co-located high-level attention, so the copies line up by construction.
            geo = [(a.config.in_channels, a.config.num_attention_heads, a.config.cross_attention_dim) for a in high]
            block.attentions_lowlevel = nn.ModuleList(transformer2d(c, h, x, self.config) for c, h, x in geo)
            if self.fusion == "parallel":
                block.attentions_connect = nn.ModuleList(transformer2d(c, h, c, self.config) for c, h, _ in geo)

    def _attach_rgb_heads(self) -> None:
        """to_rgbs.k: 3x3 conv to RGB after the k-th stride-2 conv of the conditioning embedding."""
        ch = self.config["conditioning_embedding_out_channels"]
        self.controlnet_cond_embedding.to_rgbs = nn.ModuleList(
            nn.Conv2d(c, 3, kernel_size=3, padding=1) for c in ch[1:]
        )

    def _attach_latent_heads(self) -> None:
        """conv_degradation.i.0: 3x3 conv to the latent channels on residual i (one-element Sequentials, as the
        official key names ``conv_degradation.{i}.0.*`` need)."""
        out = self.config["in_channels"]
        head = lambda c: nn.Sequential(nn.Conv2d(c, out, kernel_size=3, padding=1))  # noqa: E731
        self.conv_degradation = nn.ModuleList(head(zc.in_channels) for zc in self.controlnet_down_blocks)
        self.conv_degradation_mid = head(self.controlnet_mid_block.in_channels)

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        e_high: torch.Tensor,
        e_low: torch.Tensor | None,
        cond: torch.Tensor,
        conditioning_scale: float = 1.0,
    ) -> ControlNetOutputs:
        """sample (B, 4, h, w) noisy latent; timestep scalar or (B,); e_high / e_low (B, L, X) high- and low-level
        prompt embeddings (e_low None: high-level attention only, as the official blocks do); cond (B, 3, 8h, 8w)
        LR image in [0, 1]. -> (latent_dfc[13], rgb_dfc[3], down_residuals[12], mid_residual)."""
        emb = _time_embedding(self, timestep, sample)
        if self.config.get("controlnet_conditioning_channel_order", "rgb") == "bgr":
            cond = torch.flip(cond, dims=[1])
        cond_features, rgb_dfc = self._embed_condition(cond)
        x = self.conv_in(sample) + cond_features

        feats = [x]
        for block in self.down_blocks:
            if getattr(block, "attentions", None) is None:
                x, outs = block(x, emb)
                feats.extend(outs)
                continue
            for j, resnet in enumerate(block.resnets):
                x = self._fuse(block, j, resnet(x, emb), e_high, e_low)
                feats.append(x)
            if block.downsamplers is not None:
                for down in block.downsamplers:
                    x = down(x)
                feats.append(x)
        mid = self.mid_block
        x = mid.resnets[0](x, emb)
        for j, resnet in enumerate(mid.resnets[1:]):
            x = resnet(self._fuse(mid, j, x, e_high, e_low), emb)

        down_res = [zero_conv(f) for zero_conv, f in zip(self.controlnet_down_blocks, feats)]
        mid_res = self.controlnet_mid_block(x)
        latent_dfc = []
        if self.switches.latent_dfc:
            # The latent DFC heads see the residuals after the zero convs and before conditioning_scale.
            latent_dfc = [head(r) for head, r in zip(self.conv_degradation, down_res)]
            latent_dfc.append(self.conv_degradation_mid(mid_res))
        down_res = [r * conditioning_scale for r in down_res]
        return ControlNetOutputs(latent_dfc, rgb_dfc, down_res, mid_res * conditioning_scale)

    def _embed_condition(self, cond: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """conv_in -> SiLU -> (conv -> SiLU) x 6 -> conv_out; an RGB head after every stride-2 conv."""
        emb = self.controlnet_cond_embedding
        h = F.silu(emb.conv_in(cond))
        rgbs = []
        for k, conv in enumerate(emb.blocks):
            h = F.silu(conv(h))
            if k % 2 == 1 and self.switches.pixel_dfc:
                rgbs.append(emb.to_rgbs[k // 2](h))
        return emb.conv_out(h), rgbs

    def _fuse(self, block, j: int, x: torch.Tensor, e_high, e_low) -> torch.Tensor:
        """Cross-attention site j of a block under the configured fusion."""
        high = _attend(block.attentions[j], x, e_high)
        if e_low is None or self.fusion == "high_only":
            return high
        if self.fusion == "sequential":
            return _attend(block.attentions_lowlevel[j], high, e_low)
        # parallel (SFA): both prompt attentions read the same x; the fusion attention queries the high-level
        # output with keys/values from the low-level output's (un-normalised) tokens; its residual adds `high`.
        low = _attend(block.attentions_lowlevel[j], x, e_low)
        return _attend(block.attentions_connect[j], high, tokens(low))


def from_configs(unet_config: Mapping[str, Any],
                 controlnet_config: Mapping[str, Any]) -> tuple[XPSRUNet, XPSRControlNet]:
    """Both models from their config.json dicts, after checking the ControlNet fits the UNet."""
    C.check_pair(unet_config, controlnet_config)
    return XPSRUNet(unet_config), XPSRControlNet(controlnet_config)

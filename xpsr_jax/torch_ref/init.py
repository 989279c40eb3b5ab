"""XPSR's initialisation for training from SD1.5, tensor by tensor.

* UNet: every SD1.5 tensor copied; ``pixel_attentions`` keep PyTorch's default init.
* ControlNet, like ``ControlNetModel.from_unet``: ``conv_in``, ``time_embedding``, ``down_blocks``, ``mid_block``
  copied from the UNet; ``attentions_lowlevel`` full copies of the co-located UNet ``attentions``;
  ``attentions_connect`` copies too except ``attn2.to_k`` / ``attn2.to_v`` (their input is the fusion's C-wide
  tokens, not the text embedding), which keep the default init; the zero convs (``controlnet_down_blocks``,
  ``controlnet_mid_block``, ``controlnet_cond_embedding.conv_out``) zero; everything else (conditioning-embedding
  convs, ``to_rgbs``, ``conv_degradation*``) the default init.

"Default init" is what the modules get when built: Linear / Conv weight and bias ~ U(+-1/sqrt(fan_in)), norms
weight 1 and bias 0. Both models are built under ``torch.manual_seed(seed)``, so a seed fixes every tensor.

The rule functions say, per state-dict key, where its initial value comes from; tests of other initialisers can
use them to compare tensor by tensor.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from xpsr_jax.torch_ref.config import controlnet_config_from_unet
from xpsr_jax.torch_ref.models import XPSRControlNet, XPSRUNet

COPY, ZERO, DEFAULT = "copy", "zero", "default"
Source = tuple[str, Optional[str]]  # (COPY, unet key) | (ZERO, None) | (DEFAULT, None)

_ZERO_PREFIXES = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")
_DEFAULT_PREFIXES = ("controlnet_cond_embedding.", "conv_degradation.", "conv_degradation_mid.")
_COPY_PREFIXES = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")


def unet_init_source(key: str) -> Source:
    """Where the initial value of XPSR UNet tensor ``key`` comes from (its namesake in the SD1.5 UNet)."""
    if ".pixel_attentions." in key:
        return DEFAULT, None
    return COPY, key


def controlnet_init_source(key: str) -> Source:
    """Where the initial value of XPSR ControlNet tensor ``key`` comes from (a key of the SD1.5 UNet)."""
    if key.startswith(_ZERO_PREFIXES):
        return ZERO, None
    if key.startswith(_DEFAULT_PREFIXES):
        return DEFAULT, None
    if not key.startswith(_COPY_PREFIXES):
        raise KeyError(f"no initialisation rule for ControlNet key {key!r}")
    if ".attentions_connect." in key:
        if key.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
            return DEFAULT, None
        return COPY, key.replace(".attentions_connect.", ".attentions.")
    return COPY, key.replace(".attentions_lowlevel.", ".attentions.")


def from_sd15_unet(
    stock_unet: UNet2DConditionModel,
    seed: int = 0,
    *,
    fusion: str = "parallel",
    pixel_dfc: bool = True,
    latent_dfc: bool = True,
    pixel_attention: bool = True,
) -> tuple[XPSRUNet, XPSRControlNet]:
    """SD1.5 UNet (a stock diffusers model with its weights) -> the XPSR (unet, controlnet) training starts from.

    The keyword switches select an ablation (see :class:`~xpsr_jax.torch_ref.config.ControlNetSwitches`); the
    defaults are the released model. ``stock_unet`` is not modified.
    """
    unet_config = dict(stock_unet.config)
    if not pixel_attention:
        unet_config["pixel_attention"] = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = XPSRUNet(unet_config)
        controlnet = XPSRControlNet(controlnet_config_from_unet(
            unet.config, fusion=fusion, pixel_dfc=pixel_dfc, latent_dfc=latent_dfc))
    sd15 = {k: v.detach().to("cpu", torch.float32) for k, v in stock_unet.state_dict().items()}
    _apply(unet, unet_init_source, sd15)
    _apply(controlnet, controlnet_init_source, sd15)
    return unet, controlnet


def _apply(model: nn.Module, rule: Callable[[str], Source], sd15: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, tensor in model.state_dict().items():  # views of the parameters: writing them writes the model
            how, src = rule(key)
            if how == ZERO:
                tensor.zero_()
            elif how == COPY:
                if src not in sd15 or sd15[src].shape != tensor.shape:
                    raise KeyError(f"{key}: source {src!r} missing from the SD1.5 UNet or of another shape")
                tensor.copy_(sd15[src])

"""The official XPSR config.json dicts: validating them, splitting them into stock-diffusers arguments plus the XPSR
switches, and writing them back in the official layout.

The official classes are diffusers-0.21.4 classes with extra fields. Their config.json is the stock 0.21.4 field
set plus:

* UNet: ``up_use_lowlevel_prompt`` (list of bools), ``mid_use_lowlevel_prompt``, ``down_use_lowlevel_prompt`` — must
  all be false (the released UNet has no low-level attention; the official loader accepts only that layout here).
* ControlNet: ``return_rgbs`` (pixel DFC heads), ``use_latent_pred`` (latent DFC heads), ``use_lowlevel_prompt``
  (Semantic-Fusion Attention), ``use_rrdb`` (must be false).

Two ablations the official fields cannot express are stored under this project's own keys, written only when they
differ from the released model (so a released-layout checkpoint stays byte-for-byte official): ControlNet
``fusion = "sequential"`` and UNet ``pixel_attention = false``. Diffusers ignores unknown keys, but the official code
cannot load such checkpoints anyway (their key sets differ).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Mapping

from diffusers import ControlNetModel, UNet2DConditionModel
from xpsr_jax.errors import XPSRError

FUSIONS = ("parallel", "sequential", "high_only")
OFFICIAL_DIFFUSERS_VERSION = "0.21.4"

# Arguments diffusers 0.42 takes that the official 0.21.4-based classes do not: they must keep these values (the
# official model cannot express anything else) and are not written to config.json.
_UNET_NEWER = {"dropout": 0.0, "reverse_transformer_layers_per_block": None}
_CONTROLNET_NEWER = {"mid_block_type": "UNetMidBlock2DCrossAttn"}

# Stock features the reference forward functions do not implement (none is used by SD1.5 or XPSR).
_UNSUPPORTED = {
    "class_embed_type": None,
    "num_class_embeds": None,
    "addition_embed_type": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "time_cond_proj_dim": None,
    "only_cross_attention": False,
    "transformer_layers_per_block": 1,
    "global_pool_conditions": False,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "dual_cross_attention": False,
    "time_embedding_act_fn": None,
    "attention_type": "default",
    "cross_attention_norm": None,
}

# What ControlNetModel.from_unet carries over from the UNet config (same field names on both sides).
_FROM_UNET_FIELDS = (
    "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention", "block_out_channels",
    "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps",
    "cross_attention_dim", "transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type",
    "attention_head_dim", "num_attention_heads", "use_linear_projection", "class_embed_type", "addition_embed_type",
    "addition_time_embed_dim", "num_class_embeds", "upcast_attention", "resnet_time_scale_shift",
    "projection_class_embeddings_input_dim",
)
# Fields the UNet and its ControlNet must agree on for the residuals to fit the UNet's skips.
_SHARED_FIELDS = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
                  "attention_head_dim", "num_attention_heads", "norm_num_groups")


class ConfigError(XPSRError, ValueError):
    """A config dict does not describe a model the reference can build; the message names the field."""


@dataclass(frozen=True)
class ControlNetSwitches:
    """XPSR's ControlNet ablation switches (the released model: parallel, True, True)."""

    fusion: str = "parallel"  # "parallel" (SFA) | "sequential" (high then low, no fusion attention) | "high_only"
    pixel_dfc: bool = True  # to_rgbs heads on the conditioning embedding
    latent_dfc: bool = True  # conv_degradation / conv_degradation_mid heads on the residuals


def unet_switches(config: Mapping[str, Any]) -> bool:
    """-> whether the UNet decoder has pixel attentions (official fields checked)."""
    _check_lowlevel_off(config)
    return bool(config.get("pixel_attention", True))


def controlnet_switches(config: Mapping[str, Any]) -> ControlNetSwitches:
    if config.get("use_rrdb", False):
        raise ConfigError("controlnet config: use_rrdb=true (RRDB preprocessor) is not supported; the released "
                          "model has it off")
    lowlevel = bool(config.get("use_lowlevel_prompt", True))
    fusion = config.get("fusion", "parallel" if lowlevel else "high_only")
    if fusion not in FUSIONS:
        raise ConfigError(f"controlnet config: fusion must be one of {FUSIONS}, got {fusion!r}")
    if lowlevel != (fusion != "high_only"):
        raise ConfigError(f"controlnet config: fusion={fusion!r} contradicts use_lowlevel_prompt={lowlevel}")
    return ControlNetSwitches(fusion, bool(config.get("return_rgbs", True)), bool(config.get("use_latent_pred", True)))


def stock_unet_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of the stock ``diffusers.UNet2DConditionModel`` that ``config`` sets (validated)."""
    kw = _stock_kwargs(UNet2DConditionModel, config, _UNET_NEWER, "unet")
    for field, want in (("mid_block_type", "UNetMidBlock2DCrossAttn"), ("conv_in_kernel", 3), ("conv_out_kernel", 3)):
        if kw.get(field, want) != want:
            raise ConfigError(f"unet config: {field}={kw[field]!r} is not supported (need {want!r})")
    for t in kw.get("up_block_types", ()):
        if t not in ("UpBlock2D", "CrossAttnUpBlock2D"):
            raise ConfigError(f"unet config: up block type {t!r} is not supported")
    return kw


def stock_controlnet_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of the stock ``diffusers.ControlNetModel`` that ``config`` sets (validated)."""
    kw = _stock_kwargs(ControlNetModel, config, _CONTROLNET_NEWER, "controlnet")
    if "cross_attention_dim" not in config:
        # The class default (1280) is not SD1.5's 768; an official config always states it.
        raise ConfigError("controlnet config: cross_attention_dim is missing")
    if kw.get("controlnet_conditioning_channel_order", "rgb") not in ("rgb", "bgr"):
        raise ConfigError(f"controlnet config: bad controlnet_conditioning_channel_order "
                          f"{kw['controlnet_conditioning_channel_order']!r}")
    return kw


def check_pair(unet_config: Mapping[str, Any], controlnet_config: Mapping[str, Any]) -> None:
    """Raise if the ControlNet's residuals cannot feed this UNet."""
    for field in _SHARED_FIELDS:
        a, b = _jsonable(unet_config.get(field)), _jsonable(controlnet_config.get(field))
        if field in unet_config and field in controlnet_config and a != b:
            raise ConfigError(f"controlnet config {field}={b!r} differs from the UNet's {a!r}")


def controlnet_config_from_unet(unet_config: Mapping[str, Any], **switches: Any) -> dict[str, Any]:
    """The ControlNet config ``ControlNetModel.from_unet`` derives from a UNet config, with the XPSR fields.

    ``switches``: ``fusion``, ``pixel_dfc``, ``latent_dfc`` (:class:`ControlNetSwitches` fields).
    """
    sw = ControlNetSwitches(**switches)
    out = {k: unet_config[k] for k in _FROM_UNET_FIELDS if k in unet_config}
    out.update(controlnet_conditioning_channel_order="rgb", conditioning_embedding_out_channels=[16, 32, 96, 256],
               conditioning_channels=3)
    out.update(_controlnet_xpsr_fields(sw))
    return out


def official_unet_config(stock_config: Mapping[str, Any], pixel_attention: bool) -> dict[str, Any]:
    """The config.json of an official XPSR UNet, from the stock model's ``.config``."""
    out = _official_fields(stock_config, _UNET_NEWER, "UNet2DConditionModel")
    n = len(out["up_block_types"])
    out.update(up_use_lowlevel_prompt=[False] * n, mid_use_lowlevel_prompt=False, down_use_lowlevel_prompt=False)
    if not pixel_attention:
        out["pixel_attention"] = False
    return dict(sorted(out.items()))


def official_controlnet_config(stock_config: Mapping[str, Any], switches: ControlNetSwitches) -> dict[str, Any]:
    """The config.json of an official XPSR ControlNet, from the stock model's ``.config``."""
    out = _official_fields(stock_config, _CONTROLNET_NEWER, "ControlNetModel")
    out.update(_controlnet_xpsr_fields(switches))
    return dict(sorted(out.items()))


def heads_per_block(config: Mapping[str, Any]) -> list[int]:
    """Attention heads of each down block (diffusers: ``num_attention_heads`` or, for SD1.5, ``attention_head_dim``)."""
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    n = len(config["block_out_channels"])
    return list(heads) if isinstance(heads, (list, tuple)) else [heads] * n


# --- helpers -----------------------------------------------------------------------------------------------------
def _controlnet_xpsr_fields(sw: ControlNetSwitches) -> dict[str, Any]:
    out = dict(return_rgbs=sw.pixel_dfc, use_rrdb=False, use_lowlevel_prompt=sw.fusion != "high_only",
               use_latent_pred=sw.latent_dfc)
    if sw.fusion == "sequential":
        out["fusion"] = "sequential"
    return out


def _check_lowlevel_off(config: Mapping[str, Any]) -> None:
    ups = config.get("up_use_lowlevel_prompt", [])
    if any(ups) or config.get("mid_use_lowlevel_prompt", False) or config.get("down_use_lowlevel_prompt", False):
        raise ConfigError("unet config: *_use_lowlevel_prompt must all be false (the XPSR UNet has no low-level "
                          "attention)")


def _stock_kwargs(cls, config: Mapping[str, Any], newer: Mapping[str, Any], what: str) -> dict[str, Any]:
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kw = {k: v for k, v in config.items() if k in accepted}
    for field, want in {**newer, **_UNSUPPORTED}.items():
        if field in kw and _jsonable(kw[field]) != _jsonable(want):
            raise ConfigError(f"{what} config: {field}={kw[field]!r} is not supported (need {want!r})")
    if "block_out_channels" not in kw:
        raise ConfigError(f"{what} config: block_out_channels is missing")
    return kw


def _official_fields(stock_config: Mapping[str, Any], newer: Mapping[str, Any], class_name: str) -> dict[str, Any]:
    out = {k: _jsonable(v) for k, v in stock_config.items() if not k.startswith("_") and k not in newer}
    out["_class_name"] = class_name
    out["_diffusers_version"] = OFFICIAL_DIFFUSERS_VERSION
    return out


def _jsonable(v: Any) -> Any:
    return [_jsonable(x) for x in v] if isinstance(v, (list, tuple)) else v

"""Shape configs of the SD1.5 UNet and the XPSR ControlNet, read from and written to diffusers' config.json."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

FUSIONS = ("parallel", "sequential", "high_only")

SD15_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
SD15_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3


class ConfigError(ValueError):
    """A config.json does not describe a model this package can build; the message names the field."""


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """What both the UNet and the ControlNet are built from (diffusers field names).

    ``attention_head_dim`` is, as in diffusers' SD1.5 config, the number of heads (8), not their width.
    XPSR switches: ``pixel_attention`` (UNet decoder attends to ControlNet residuals), ``fusion`` (how the ControlNet
    mixes the high- and low-level prompts: ``parallel`` = Semantic-Fusion Attention, ``sequential``, ``high_only``),
    ``pixel_dfc`` / ``latent_dfc`` (the DFC heads).
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = SD15_DOWN
    up_block_types: tuple[str, ...] = SD15_UP
    sample_size: int = 64
    conditioning_channels: int = 3
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    pixel_attention: bool = True
    fusion: str = "parallel"
    pixel_dfc: bool = True
    latent_dfc: bool = True

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups or c % self.attention_head_dim:
                raise ConfigError(
                    f"block_out_channels {self.block_out_channels}: {c} does not divide into "
                    f"norm_num_groups {self.norm_num_groups} and {self.attention_head_dim} heads"
                )
        if len(self.down_block_types) != len(self.block_out_channels):
            raise ConfigError(f"{len(self.down_block_types)} down blocks for {len(self.block_out_channels)} levels")

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    def replace(self, **kw) -> "UNetConfig":
        return dataclasses.replace(self, **kw)

    # --- diffusers config.json -----------------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, unet: Mapping[str, Any], controlnet: Mapping[str, Any] | None = None,
                       source: str = "config.json") -> "UNetConfig":
        """Build from a UNet config.json (and optionally the ControlNet's, for its XPSR switches)."""
        _check(unet, source, "use_linear_projection", False)
        _check(unet, source, "class_embed_type", None)
        _check(unet, source, "addition_embed_type", None)
        if unet.get("num_attention_heads") not in (None, unet.get("attention_head_dim")):
            raise ConfigError(f"{source}: num_attention_heads {unet['num_attention_heads']} is not supported")
        if unet.get("transformer_layers_per_block", 1) != 1:
            raise ConfigError(f"{source}: transformer_layers_per_block must be 1")
        down = tuple(unet.get("down_block_types", SD15_DOWN))
        up = tuple(unet.get("up_block_types", SD15_UP))
        if any(t not in ("CrossAttnDownBlock2D", "DownBlock2D") for t in down) or down[-1] != "DownBlock2D":
            raise ConfigError(f"{source}: unsupported down_block_types {list(down)}")
        if any(t not in ("CrossAttnUpBlock2D", "UpBlock2D") for t in up) or up[0] != "UpBlock2D":
            raise ConfigError(f"{source}: unsupported up_block_types {list(up)}")
        kw = dict(
            in_channels=unet.get("in_channels", 4),
            out_channels=unet.get("out_channels", 4),
            block_out_channels=tuple(unet["block_out_channels"]),
            layers_per_block=unet.get("layers_per_block", 2),
            cross_attention_dim=unet.get("cross_attention_dim", 768),
            attention_head_dim=unet.get("attention_head_dim", 8),
            norm_num_groups=unet.get("norm_num_groups", 32),
            norm_eps=unet.get("norm_eps", 1e-5),
            flip_sin_to_cos=unet.get("flip_sin_to_cos", True),
            freq_shift=unet.get("freq_shift", 0),
            down_block_types=down,
            up_block_types=up,
            sample_size=unet.get("sample_size", 64),
            # not an official field: written only for the ablation without pixel attentions
            pixel_attention=bool(unet.get("pixel_attention", True)),
        )
        if controlnet is not None:
            for field in ("block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim",
                          "norm_num_groups"):
                if field in controlnet and _norm(controlnet[field]) != _norm(unet.get(field)):
                    raise ConfigError(
                        f"controlnet config {field}={controlnet[field]} differs from the UNet's {unet.get(field)}"
                    )
            if controlnet.get("use_rrdb", False):
                raise ConfigError("controlnet config: use_rrdb=true (RRDB preprocessor) is not supported")
            kw.update(
                conditioning_channels=controlnet.get("conditioning_channels", 3),
                conditioning_embedding_out_channels=tuple(
                    controlnet.get("conditioning_embedding_out_channels", (16, 32, 96, 256))
                ),
                # "fusion" is not an official field: written only for the sequential ablation
                fusion=controlnet.get("fusion", "parallel" if controlnet.get("use_lowlevel_prompt", True)
                                      else "high_only"),
                pixel_dfc=bool(controlnet.get("return_rgbs", True)),
                latent_dfc=bool(controlnet.get("use_latent_pred", True)),
            )
        return cls(**kw)

    def unet_diffusers(self) -> dict[str, Any]:
        """The UNet config.json the official XPSR loader needs."""
        n = len(self.block_out_channels)
        return {
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": "0.21.4",
            "act_fn": "silu",
            "attention_head_dim": self.attention_head_dim,
            "block_out_channels": list(self.block_out_channels),
            "center_input_sample": False,
            "cross_attention_dim": self.cross_attention_dim,
            "down_block_types": list(self.down_block_types),
            "downsample_padding": 1,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "in_channels": self.in_channels,
            "layers_per_block": self.layers_per_block,
            "mid_block_scale_factor": 1,
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "norm_eps": self.norm_eps,
            "norm_num_groups": self.norm_num_groups,
            "out_channels": self.out_channels,
            "sample_size": self.sample_size,
            "up_block_types": list(self.up_block_types),
            "use_linear_projection": False,
            "up_use_lowlevel_prompt": [False] * n,
            "mid_use_lowlevel_prompt": False,
            "down_use_lowlevel_prompt": False,
            **({} if self.pixel_attention else {"pixel_attention": False}),
        }

    def controlnet_diffusers(self) -> dict[str, Any]:
        """The ControlNet config.json the official XPSR loader needs (cross_attention_dim explicit: its class
        default is 1280)."""
        return {
            "_class_name": "ControlNetModel",
            "_diffusers_version": "0.21.4",
            "act_fn": "silu",
            "attention_head_dim": self.attention_head_dim,
            "block_out_channels": list(self.block_out_channels),
            "conditioning_channels": self.conditioning_channels,
            "conditioning_embedding_out_channels": list(self.conditioning_embedding_out_channels),
            "controlnet_conditioning_channel_order": "rgb",
            "cross_attention_dim": self.cross_attention_dim,
            "down_block_types": list(self.down_block_types),
            "downsample_padding": 1,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "global_pool_conditions": False,
            "in_channels": self.in_channels,
            "layers_per_block": self.layers_per_block,
            "mid_block_scale_factor": 1,
            "norm_eps": self.norm_eps,
            "norm_num_groups": self.norm_num_groups,
            "only_cross_attention": False,
            "resnet_time_scale_shift": "default",
            "upcast_attention": False,
            "use_linear_projection": False,
            "return_rgbs": self.pixel_dfc,
            "use_rrdb": False,
            "use_lowlevel_prompt": self.fusion != "high_only",
            "use_latent_pred": self.latent_dfc,
            **({"fusion": "sequential"} if self.fusion == "sequential" else {}),
        }


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _check(cfg: Mapping[str, Any], source: str, field: str, want) -> None:
    if cfg.get(field, want) != want:
        raise ConfigError(f"{source}: {field}={cfg[field]!r} is not supported (need {want!r})")

"""The VAE's configuration in diffusers' ``AutoencoderKL`` names (its files: :mod:`xpsr_jax.weights.vae`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"
CLASS_NAME = "AutoencoderKL"


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """What shapes the model, in diffusers' names. Frozen and hashable, so compiled functions can be cached per
    config. The defaults are Stable Diffusion 1.5's VAE (83,653,863 parameters)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 512
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        # Lists from JSON would make the config unhashable; store tuples.
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if isinstance(self.sample_size, (list, tuple)):
            object.__setattr__(self, "sample_size", tuple(int(s) for s in self.sample_size))
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"VAE: block_out_channels {self.block_out_channels} do not split into "
                                 f"{self.norm_num_groups} norm groups")

    @property
    def downsample_factor(self) -> int:
        """Image side / latent side (8 for SD1.5)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "VAEConfig":
        """A diffusers ``AutoencoderKL`` config dict -> VAEConfig; rejects block types and activations this port
        does not implement instead of silently building a different network."""
        name = cfg.get("_class_name", CLASS_NAME)
        if name != CLASS_NAME:
            raise ValueError(f"VAE config is for {name!r}, expected {CLASS_NAME!r}")
        n = len(cfg.get("block_out_channels", cls.block_out_channels))
        for field, want in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
            got = tuple(cfg.get(field, (want,) * n))
            if got != (want,) * n:
                raise ValueError(f"VAE config: {field} must be {n} x {want!r}, got {got}")
        if cfg.get("act_fn", "silu") != "silu":
            raise ValueError(f"VAE config: act_fn must be 'silu', got {cfg['act_fn']!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in known})

    def to_diffusers(self) -> dict[str, Any]:
        """The ``config.json`` contents diffusers' ``AutoencoderKL.from_pretrained`` reads."""
        n = len(self.block_out_channels)
        out = {"_class_name": CLASS_NAME, "act_fn": "silu",
               "down_block_types": [DOWN_BLOCK] * n, "up_block_types": [UP_BLOCK] * n}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


SD15 = VAEConfig()

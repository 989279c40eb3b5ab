"""What one super-resolution run is configured by, with the values of XPSR's official test script as defaults.

Reference: ``xpsr-reference.md`` §5.1 (test.py + configs/xpsr_test.yaml). Deliberate differences from the official
script, each a choice a user can undo:

* ``seed`` defaults to 0 (the official generator is unseeded), so two runs give the same pixels;
* every error is reported (the official loop prints and skips an image that fails, §8 item 16);
* the latent tiles' Gaussian weights are centred on both axes (the official map centres rows at H/2, §8 item 17;
  ``official_tile_weights=True`` reproduces that);
* large images are tiled from a memory budget instead of at a fixed 320-latent threshold (see ``tile_plan.py``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from xpsr_jax.errors import UsageError
from xpsr_jax.nn.attention_policy import DEFAULT_SPLASH_MIN_LENGTH, IMPLS, AttentionImpl

ADDED_PROMPT = "clean, high-resolution, 8k, high quality, clear text."
NEGATIVE_PROMPT = "blurry, dotted, noise, raster lines, unclear, lowres, over-smoothed."
# Hard-coded in the official pipeline for the low-level stream's unconditional half.
LOWLEVEL_NEGATIVE_PROMPT = "high resolution, best quality, clear"

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")
COLOR_FIXES = ("adain", "wavelet", "none")
DTYPES = ("float32", "bfloat16")

# Decoded images above this many pixels are refused before their pixels are read (a 4096 x 4096 input at x4 is a
# 16384 x 16384 output); PIL's own bomb check fires only at ~179 MP.
MAX_INPUT_PIXELS = 4096 * 4096
# The processed (upscaled) image is refused above this: at x4 this is what a 4096 x 4096 input becomes.
MAX_PROCESS_PIXELS = 16384 * 16384


class SettingsError(UsageError, ValueError):
    """A setting out of range; the message names it."""


@dataclasses.dataclass(frozen=True)
class SRSettings:
    """Everything that changes the pixels of a super-resolved image (and a few resource limits).

    Faithful defaults: x4, short side raised to 512, DDPM 20 steps ("leading", offset 1), CFG 4.5 on both prompt
    streams, ControlNet scale 1.0, the start latent = the LR latent noised at t=951 then at ``added_noise_level``
    800, AdaIN colour fix, fp32.
    """

    upscale: float = 4.0
    process_size: int = 512
    steps: int = 20
    sampler: str = "ddpm"
    eta: float = 0.0  # DDIM only
    guidance_scale: float = 4.5
    conditioning_scale: float = 1.0
    added_noise_level: int = 800
    start_from_noise: bool = False  # the official ``init_latent_with_noise``: start from N(0, I) instead
    added_prompt: str = ADDED_PROMPT
    negative_prompt: str = NEGATIVE_PROMPT
    lowlevel_negative_prompt: str = LOWLEVEL_NEGATIVE_PROMPT
    color_fix: str = "adain"
    seed: int = 0
    dtype: str = "float32"  # compute dtype of the UNet/ControlNet; VAE and text encoder always run in fp32
    attention_impl: str = "auto"  # see xpsr_jax.nn.attention: auto, xla, cudnn, splash
    splash_min_length: int = DEFAULT_SPLASH_MIN_LENGTH  # TPU: self-attentions this long or longer use splash
    # --- resources: these choose how the work is split, not what it computes (tiling aside, see tile_plan.py)
    memory_budget_gb: float | None = None  # None: 80% of the device's memory (8 GiB where it cannot be read)
    # denoiser: tile when the latent area exceeds max_latent_tile^2 (the official threshold, 320) or the budget;
    # None: the budget alone decides
    max_latent_tile: int | None = 320
    latent_tile_overlap: int = 16  # latent pixels shared by neighbouring denoiser tiles (official: 8 at 320)
    vae_tile_context: int = 11  # latent pixels of context around each VAE tile's core (official decoder pad)
    max_vae_tile: int | None = None  # cap on the VAE tile side in latent pixels; None: from the budget
    official_tile_weights: bool = False
    batch_size: int = 8  # images per device in one call, at most
    max_input_pixels: int = MAX_INPUT_PIXELS
    max_process_pixels: int = MAX_PROCESS_PIXELS

    def __post_init__(self):
        def bad(name: str, why: str):
            raise SettingsError(f"setting {name}={getattr(self, name)!r}: {why}")

        for name in ("upscale", "guidance_scale", "conditioning_scale", "eta"):
            if not math.isfinite(getattr(self, name)):  # NaN passes every comparison below
                bad(name, "must be a finite number")
        if not self.upscale > 0:
            bad("upscale", "must be > 0")
        if self.process_size < 8:
            bad("process_size", "must be >= 8")
        if not 1 <= self.steps <= 1000:
            bad("steps", "must be in [1, 1000]")
        if self.sampler not in SAMPLERS:
            bad("sampler", f"expected one of {SAMPLERS}")
        if not 0 <= self.added_noise_level <= 999:
            bad("added_noise_level", "must be a timestep in [0, 999]")
        if self.color_fix not in COLOR_FIXES:
            bad("color_fix", f"expected one of {COLOR_FIXES}")
        if self.dtype not in DTYPES:
            bad("dtype", f"expected one of {DTYPES}")
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            bad("memory_budget_gb", "must be > 0")
        for name in ("max_latent_tile", "max_vae_tile"):
            v = getattr(self, name)
            if v is not None and v < 8:
                bad(name, "must be >= 8 latent pixels")
        if self.latent_tile_overlap < 0 or self.vae_tile_context < 0:
            bad("latent_tile_overlap", "overlaps must be >= 0")
        if self.batch_size < 1:
            bad("batch_size", "must be >= 1")
        if self.attention_impl not in IMPLS:
            bad("attention_impl", f"expected one of {IMPLS}")
        if self.splash_min_length < 1:
            bad("splash_min_length", "must be >= 1")

    @property
    def attention(self) -> AttentionImpl:
        """The kernel policy every network of the pipeline is built with."""
        return AttentionImpl(self.attention_impl, self.splash_min_length)

    def replace(self, **kw) -> "SRSettings":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def pixel_settings(self) -> dict[str, Any]:
        """The settings that decide the output pixels (what a result's JSON sidecar records)."""
        resources = {"memory_budget_gb", "batch_size", "max_input_pixels", "max_process_pixels", "attention_impl",
                     "splash_min_length"}
        return {k: v for k, v in self.to_dict().items() if k not in resources}

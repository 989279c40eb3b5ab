"""How to split one batch of work so that every network call fits a device-memory budget.

The estimates are analytic upper bounds on the *live activations* of one inference call (no gradients), counted from
the model configs, plus the resident parameters:

* denoiser, per CFG row and latent pixel: the ControlNet residuals and UNet skips that stay alive
  (2 x sum_l (layers+1) C_l / 4^l), a working set at the top level (16 C_0: the GEGLU feed-forward alone is 8 C_0),
  and the conditioning embedding at 8x resolution (3 x 64 x its first width); plus, unless flash attention runs
  (GPU, bf16/fp16, cuDNN), the attention matrices at the top level: heads x N^2 fp32 scores, probabilities and a
  copy (N = latent pixels of the call) - the term that forces tiling of large images;
* VAE encoder/decoder, per image and latent pixel: six fp32 feature maps at the widest level (64 C_0 at full
  resolution for SD), plus the mid block's single-head N^2 attention (the VAE always runs in fp32).

A 1.5 safety factor covers XLA's temporaries. The planner then takes, in order: the whole latent in one call if
it fits (and its area is within ``max_latent_tile``^2, the official 320^2 threshold by default, beyond which SD
attention is both slow and off its training distribution); else the largest square tile, a multiple of 8, that
fits, with as many tiles per call as fit. The VAE gets its own tile side the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import jax

from xpsr_jax.models.config import UNetConfig
from xpsr_jax.models.vae_config import VAEConfig
from xpsr_jax.errors import XPSRError

GIB = 2 ** 30
DEFAULT_BUDGET = 8 * GIB  # where the device does not report its memory (CPU)
SAFETY = 1.5
OFFICIAL_TILE_THRESHOLD = 320


class BudgetError(XPSRError, MemoryError):
    """Even the smallest tile does not fit the memory budget; the message gives the numbers."""


def device_budget(budget_gb: float | None, device=None) -> int:
    """Bytes the planner may use: ``budget_gb`` if given, else 80% of what the device reports, else 8 GiB."""
    if budget_gb is not None:
        return int(budget_gb * GIB)
    device = device or jax.local_devices()[0]
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001 - backends without memory stats raise various errors
        limit = None
    return int(0.8 * limit) if limit else DEFAULT_BUDGET


def uses_flash_attention(dtype: str, attention_impl: str, backend: str | None = None) -> bool:
    """Whether the denoiser's long self-attentions avoid N^2 memory: cuDNN flash (GPU, half precision) or
    splash (TPU, any dtype; the short ones it leaves to XLA are small)."""
    backend = backend or jax.default_backend()
    if backend == "tpu":
        return attention_impl in ("auto", "splash")
    return backend == "gpu" and dtype == "bfloat16" and attention_impl in ("auto", "cudnn")


def denoiser_bytes(cfg: UNetConfig, images: int, h: int, w: int, dtype_bytes: int, flash: bool) -> float:
    """Estimated peak activation bytes of one CFG denoiser call on ``images`` latents of (h, w)."""
    ch = cfg.block_out_channels
    skips = 2 * sum((cfg.layers_per_block + 1) * c / 4 ** i for i, c in enumerate(ch))
    per_px = (skips + 16 * ch[0]) * dtype_bytes + 3 * 64 * cfg.conditioning_embedding_out_channels[0] * 4
    n = h * w
    attention = 0.0 if flash else 3 * cfg.attention_head_dim * n * n * 4
    rows = 2 * images
    return SAFETY * rows * (per_px * n + attention)


def vae_bytes(cfg: VAEConfig, images: int, h: int, w: int) -> float:
    """Estimated peak activation bytes of a VAE encode or decode of ``images`` latents of (h, w), fp32."""
    f = cfg.downsample_factor
    widest = max(c * (f * f) / 4 ** i for i, c in enumerate(cfg.block_out_channels))
    n = h * w
    return SAFETY * images * (6 * widest * n * 4 + 3 * n * n * 4)


@dataclass(frozen=True)
class TilePlan:
    """How one group of same-size images is processed.

    batch: images per call (per device); latent_tile: denoiser window side or None (whole latent);
    tile_batch: windows per denoiser call; vae_tile: VAE window side in latent pixels or None;
    budget, params, denoiser, vae: bytes (the budget, resident parameters and the estimates of one call).
    """

    batch: int
    latent_tile: int | None
    tile_batch: int
    vae_tile: int | None
    budget: int
    params: int
    denoiser: float
    vae: float

    def describe(self) -> dict:
        d = asdict(self)
        for k in ("budget", "params", "denoiser", "vae"):
            d[k + "_gib"] = round(d.pop(k) / GIB, 3)
        return d


def _largest_fitting(limit: int, fits) -> int | None:
    """The largest side in (limit, then multiples of 8 below it, down to 8) for which ``fits`` holds."""
    for side in [limit] + list(range((limit - 1) // 8 * 8, 7, -8)):
        if side >= 8 and fits(side):
            return side
    return None


def plan_tiles(latent_hw: tuple[int, int], images: int, unet_cfg: UNetConfig, vae_cfg: VAEConfig, *,
               budget: int, param_bytes: int, dtype: str = "float32", flash: bool = False,
               max_batch: int = 8, max_latent_tile: int | None = OFFICIAL_TILE_THRESHOLD,
               max_vae_tile: int | None = None) -> TilePlan:
    """The :class:`TilePlan` for ``images`` latents of ``latent_hw`` under ``budget`` bytes."""
    h, w = latent_hw
    avail = budget - param_bytes
    if avail <= 0:
        raise BudgetError(f"the parameters alone ({param_bytes / GIB:.2f} GiB) exceed the memory budget "
                          f"({budget / GIB:.2f} GiB)")
    db = 2 if dtype == "bfloat16" else 4
    den = lambda n, a, b: denoiser_bytes(unet_cfg, n, a, b, db, flash)  # noqa: E731
    within_cap = max_latent_tile is None or h * w <= max_latent_tile ** 2
    if within_cap and den(1, h, w) <= avail:
        batch = max(1, min(max_batch, images, int(avail // den(1, h, w))))
        latent_tile, tile_batch, den_est = None, 1, den(batch, h, w)
    else:
        cap = min(max(h, w), max_latent_tile or max(h, w))
        side = _largest_fitting(cap, lambda s: den(1, min(s, h), min(s, w)) <= avail)
        if side is None:
            raise BudgetError(f"an 8x8 latent tile needs {den(1, 8, 8) / GIB:.2f} GiB, more than the "
                              f"{avail / GIB:.2f} GiB left by the parameters; raise memory_budget_gb")
        one = den(1, min(side, h), min(side, w))
        batch, latent_tile = 1, side
        n_tiles = math.ceil(h / side) * math.ceil(w / side)
        tile_batch = max(1, min(max_batch, n_tiles, int(avail // one)))
        den_est = one * tile_batch
    vae_cap = max(h, w) if max_vae_tile is None else min(max_vae_tile, max(h, w))
    if vae_cap >= max(h, w) and vae_bytes(vae_cfg, batch, h, w) <= avail:
        vae_tile, vae_est = None, vae_bytes(vae_cfg, batch, h, w)
    else:
        vae_tile = _largest_fitting(vae_cap, lambda s: vae_bytes(vae_cfg, batch, min(s, h), min(s, w)) <= avail)
        if vae_tile is None:
            raise BudgetError(f"an 8x8 VAE tile of {batch} image(s) does not fit {avail / GIB:.2f} GiB")
        vae_est = vae_bytes(vae_cfg, batch, min(vae_tile, h), min(vae_tile, w))
    return TilePlan(batch=batch, latent_tile=latent_tile, tile_batch=tile_batch, vae_tile=vae_tile, budget=budget,
                    params=param_bytes, denoiser=den_est, vae=vae_est)

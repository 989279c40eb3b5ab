"""The Real-ESRGAN two-stage degradation chain as XPSR's offline data generation runs it (reference §4.1).

Entry points (NumPy on CPU, reproducible from a ``numpy.random.Generator``)::

    hr, lr_up, lr_small = degrade_pair(image_uint8, np.random.default_rng(seed))
    hr, lr_up, lr_small = degrade_batch(images, rng, per_batch=True)   # the official batch sharing

``hr``: (512, 512, 3) uint8, the random 512² crop (hflip p=0.5), USM-sharpened unless ``use_usm=False``.
``lr_small``: (128, 128, 3) uint8, the degraded image. ``lr_up``: (512, 512, 3) uint8, the float LR
bicubic-upsampled to 512² before rounding: this is the LR image XPSR trains on. All three round like
``cv2.imwrite(path, img * 255)`` (half to even, saturate).

The chain, on float32 RGB in [0, 1], starting from the HR crop (sharpened, as in the reference):

1. blur (kernel 1) -> resize by a random scale (up/down/keep, mode area/bilinear/bicubic) -> Gaussian or Poisson
   noise (colour or gray), clipped -> JPEG.
2. blur (kernel 2) with p = 0.8 -> resize to int(128·scale) -> noise.
3. 50/50: [resize to 128² + final sinc -> JPEG] or [JPEG -> resize to 128² + final sinc]; clip to [0, 1].

Sharing: the official script degrades batches of 10 and draws the up/down/keep choice and scale, the resize modes,
the noise type, the second-blur coin and the final order once per batch (``ChainDraws``); kernels, noise strength,
gray-noise coin, JPEG quality, crop and flip are per image. It also reuses one gray Gaussian noise field for every
image of the batch (a side effect of how its noise is drawn). ``degrade_batch(per_batch=True)`` reproduces all of
this; by default every draw is per image (reference §8 item 22). Resizes follow ``F.interpolate`` exactly
(``resize.py``); JPEG is libjpeg where the reference used DiffJPEG (``ops.jpeg``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import cv2
import numpy as np

from xpsr_jax.data import kernels as K
from xpsr_jax.data import ops
from xpsr_jax.data.degradation_config import DegradationConfig, StageConfig
from xpsr_jax.data.resize import resize

DEFAULT_CONFIG = DegradationConfig()
_UP, _DOWN, _KEEP = 0, 1, 2


@dataclass(frozen=True)
class ChainDraws:
    """The draws the official script makes once per batch; drawn per image unless a batch shares them."""

    scale1: float
    mode1: str
    gaussian1: bool  # else Poisson
    blur2: bool
    scale2: float
    mode2: str
    gaussian2: bool
    resize_first: bool  # final order: [resize + sinc] -> JPEG
    final_mode: str
    gray_seed1: int | None = None  # set when a batch shares its gray Gaussian noise field
    gray_seed2: int | None = None


def _draw_scale(rng: np.random.Generator, stage: StageConfig) -> float:
    probs = np.asarray(stage.resize_prob, dtype=np.float64)
    kind = int(rng.choice(3, p=probs / probs.sum()))
    if kind == _UP:
        return float(rng.uniform(1.0, stage.resize_range[1]))
    if kind == _DOWN:
        return float(rng.uniform(stage.resize_range[0], 1.0))
    return 1.0


def _draw_mode(rng: np.random.Generator, cfg: DegradationConfig) -> str:
    return cfg.resize_modes[int(rng.integers(len(cfg.resize_modes)))]


def draw_chain(rng: np.random.Generator, cfg: DegradationConfig = DEFAULT_CONFIG,
               share_gray_field: bool = False) -> ChainDraws:
    """Draw the batch-level choices in the official order (stage 1, stage 2, final)."""
    scale1, mode1 = _draw_scale(rng, cfg.stage1), _draw_mode(rng, cfg)
    gaussian1 = bool(rng.uniform() < cfg.stage1.gaussian_noise_prob)
    blur2 = bool(rng.uniform() < cfg.stage2.blur_prob)
    scale2, mode2 = _draw_scale(rng, cfg.stage2), _draw_mode(rng, cfg)
    gaussian2 = bool(rng.uniform() < cfg.stage2.gaussian_noise_prob)
    resize_first = bool(rng.uniform() < cfg.resize_first_prob)
    final_mode = _draw_mode(rng, cfg)
    seeds = (int(rng.integers(2**63)), int(rng.integers(2**63))) if share_gray_field else (None, None)
    return ChainDraws(scale1, mode1, gaussian1, blur2, scale2, mode2, gaussian2, resize_first, final_mode, *seeds)


# ----------------------------------------------------------------------------------------------------------------
# HR preparation
# ----------------------------------------------------------------------------------------------------------------


def to_float_rgb(img: np.ndarray) -> np.ndarray:
    """Any HR image -> (H, W, 3) float32 in [0, 1].

    uint8 (/255), uint16 (/65535) or float (taken as [0, 1]); (H, W) and (H, W, 1) gray is repeated to 3
    channels; an alpha channel is dropped (as OpenCV's colour read does).
    """
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got {img.shape}")
    if img.dtype == np.uint8:
        out = img.astype(np.float32) / np.float32(255.0)
    elif img.dtype == np.uint16:
        out = img.astype(np.float32) / np.float32(65535.0)
    elif np.issubdtype(img.dtype, np.floating):
        out = np.clip(img.astype(np.float32), 0.0, 1.0)
    else:
        raise ValueError(f"unsupported image dtype {img.dtype}")
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out[:, :, :3])


def random_crop(img: np.ndarray, rng: np.random.Generator, size: int, hflip: bool = True,
                info: dict | None = None) -> np.ndarray:
    """Flip (p = 0.5 when ``hflip``), pad bottom/right with reflect-101 up to ``size``, random ``size``² crop.

    img: (H, W, C) float32 -> (size, size, C). Order as the reference dataset: flip, pad, crop.
    """
    flip = bool(hflip and rng.uniform() < 0.5)
    if flip:
        img = img[:, ::-1]
    h, w = img.shape[:2]
    if h < size or w < size:
        img = cv2.copyMakeBorder(np.ascontiguousarray(img), 0, max(0, size - h), 0, max(0, size - w),
                                 cv2.BORDER_REFLECT_101)
        h, w = img.shape[:2]
    top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    if info is not None:
        info.update(flip=flip, top=top, left=left)
    return np.ascontiguousarray(img[top:top + size, left:left + size])


# ----------------------------------------------------------------------------------------------------------------
# the chain
# ----------------------------------------------------------------------------------------------------------------


def _timed(timings: dict | None, name: str, fn: Callable, *args, **kwargs):
    if timings is None:
        return fn(*args, **kwargs)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    return out


def _add_noise(img: np.ndarray, rng: np.random.Generator, stage: StageConfig, gaussian: bool,
               gray_seed: int | None, record: dict) -> np.ndarray:
    if gaussian:
        sigma = float(rng.uniform(*stage.noise_range))
        gray = bool(rng.uniform() < stage.gray_noise_prob)
        field = None
        if gray and gray_seed is not None:  # the batch-shared field: same seed and shape -> same noise
            field = np.random.default_rng(gray_seed).standard_normal((*img.shape[:2], 1), dtype=np.float32)
        record.update(noise="gaussian", sigma=sigma, gray=gray)
        return ops.add_gaussian_noise(img, rng, sigma, gray, field)
    scale = float(rng.uniform(*stage.poisson_scale_range))
    gray = bool(rng.uniform() < stage.gray_noise_prob)
    record.update(noise="poisson", poisson_scale=scale, gray=gray)
    return ops.add_poisson_noise(img, rng, scale, gray)


def _jpeg(img: np.ndarray, rng: np.random.Generator, quality_range: tuple[float, float], record: dict):
    quality = int(np.rint(rng.uniform(*quality_range)))
    record["jpeg_quality"] = quality
    return ops.jpeg(np.clip(img, 0.0, 1.0), quality)


def degrade(gt: np.ndarray, rng: np.random.Generator, draws: ChainDraws, kernel1: np.ndarray,
            kernel2: np.ndarray, sinc: np.ndarray, cfg: DegradationConfig = DEFAULT_CONFIG,
            info: dict | None = None, timings: dict | None = None) -> np.ndarray:
    """Run the two-stage chain on one (H, W, 3) float32 image in [0, 1].

    Returns the (H/scale, W/scale, 3) float32 LR in [0, 1] (not rounded). Per-image values (noise strength,
    gray coin, JPEG quality) come from ``rng``; ``draws`` holds the batch-level choices; kernels are (21, 21).
    ``info`` (when given) receives the per-image values; ``timings`` accumulates seconds per step.
    """
    h, w = gt.shape[:2]
    sf = cfg.scale
    rec1, rec2, rec3 = {}, {}, {}
    # stage 1
    out = _timed(timings, "blur1", ops.filter2d, gt, kernel1)
    out = _timed(timings, "resize1", resize, out, scale_factor=draws.scale1, mode=draws.mode1)
    out = _timed(timings, "noise1", _add_noise, out, rng, cfg.stage1, draws.gaussian1, draws.gray_seed1, rec1)
    out = _timed(timings, "jpeg1", _jpeg, out, rng, cfg.stage1.jpeg_range, rec1)
    # stage 2
    if draws.blur2:
        out = _timed(timings, "blur2", ops.filter2d, out, kernel2)
    size2 = (int(h / sf * draws.scale2), int(w / sf * draws.scale2))
    out = _timed(timings, "resize2", resize, out, size=size2, mode=draws.mode2)
    out = _timed(timings, "noise2", _add_noise, out, rng, cfg.stage2, draws.gaussian2, draws.gray_seed2, rec2)
    # final: resizing back and the sinc filter stay together; the JPEG goes before or after them
    lr_size = (h // sf, w // sf)

    def resize_and_sinc(x):
        return ops.filter2d(resize(x, size=lr_size, mode=draws.final_mode), sinc)

    if draws.resize_first:
        out = _timed(timings, "resize3_sinc", resize_and_sinc, out)
        out = _timed(timings, "jpeg2", _jpeg, out, rng, cfg.stage2.jpeg_range, rec3)
    else:
        out = _timed(timings, "jpeg2", _jpeg, out, rng, cfg.stage2.jpeg_range, rec3)
        out = _timed(timings, "resize3_sinc", resize_and_sinc, out)
    if info is not None:
        info.update(stage1=rec1, stage2=rec2, final=rec3)
    return np.clip(out, 0.0, 1.0)


def upsample_bicubic(lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of an (h, w, C) float32 image to ``size`` = (H, W), as ``F.interpolate(mode='bicubic')``.

    For integer factors OpenCV's float32 INTER_CUBIC is the same filter (a = -0.75, half-pixel centres, clamped
    borders): it agrees with PyTorch to ~3e-7 and is several times faster than ``resize``, which is used otherwise.
    PIL's bicubic (a = -0.5) differs by up to ~0.1 and is not used. No clamping: overshoot is saturated when rounding.
    """
    h, w = lr.shape[:2]
    if size[0] % h == 0 and size[1] % w == 0:
        out = cv2.resize(lr, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
        return out[..., None] if out.ndim < lr.ndim else out
    return resize(lr, size=size, mode="bicubic")


def degrade_pair(hr: np.ndarray, rng: np.random.Generator, cfg: DegradationConfig = DEFAULT_CONFIG,
                 draws: ChainDraws | None = None, info: dict | None = None,
                 timings: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One HR image -> (hr_uint8, lr_up_uint8, lr_small_uint8), see the module docstring.

    hr: (H, W[, C]) uint8/uint16/float image of any size (padded by reflection when under ``cfg.gt_size``).
    rng: every random draw comes from it, so ``np.random.default_rng(seed)`` (or ``[seed, index]``) reproduces a
    pair exactly. draws: batch-level choices to share (``draw_chain``); drawn from ``rng`` when None.
    info: filled with every draw (crop, flip, kernels, chain, noise, JPEG) when given.
    """
    info = {} if info is None else info
    gt = _timed(timings, "crop", lambda: random_crop(to_float_rgb(hr), rng, cfg.gt_size, cfg.use_hflip, info))
    specs = _timed(timings, "kernels", lambda: (K.sample_blur_spec(rng, cfg.kernel1),
                                                 K.sample_blur_spec(rng, cfg.kernel2),
                                                 K.sample_final_sinc_spec(rng, cfg.final_sinc)))
    kernel1, kernel2, sinc = _timed(timings, "kernels", lambda: [K.render(s) for s in specs])
    if cfg.use_usm:
        gt = _timed(timings, "usm", ops.usm_sharpen, gt, cfg.usm_weight, cfg.usm_radius, cfg.usm_threshold)
    gt = np.clip(gt, 0.0, 1.0)
    if draws is None:
        draws = draw_chain(rng, cfg)
    info.update(kernel1=specs[0], kernel2=specs[1], sinc=specs[2], draws=asdict(draws))
    lr = degrade(gt, rng, draws, kernel1, kernel2, sinc, cfg, info, timings)
    lr_up = _timed(timings, "upsample", upsample_bicubic, lr, gt.shape[:2])
    return ops.to_uint8(gt), ops.to_uint8(lr_up), ops.to_uint8(lr)


def degrade_batch(hrs: Sequence[np.ndarray] | np.ndarray, rng: np.random.Generator,
                  cfg: DegradationConfig = DEFAULT_CONFIG, per_batch: bool = False,
                  infos: list | None = None, timings: dict | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of HR images -> stacked (B, 512, 512, 3), (B, 512, 512, 3), (B, 128, 128, 3) uint8 arrays.

    per_batch=False: every draw per image. per_batch=True: the official behaviour, one ``ChainDraws`` (and one gray
    Gaussian noise field per stage) for the whole batch. ``infos`` (a list) receives one info dict per image.
    """
    if len(hrs) == 0:
        raise ValueError("empty batch")
    shared = draw_chain(rng, cfg, share_gray_field=True) if per_batch else None
    outs = []
    for hr in hrs:
        info = {}
        outs.append(degrade_pair(hr, rng, cfg, draws=shared, info=info, timings=timings))
        if infos is not None:
            infos.append(info)
    return tuple(np.stack(parts) for parts in zip(*outs))

"""PSNR and SSIM as the super-resolution literature computes them.

The XPSR evaluation (official ``test.py::metrics``, pyiqa 0.1.10) measures both on the luma channel:

* **Y channel.** ITU-R BT.601 "studio swing" luma, as MATLAB's ``rgb2ycbcr`` and basicsr's ``rgb2ycbcr``::

      Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255      R, G, B in [0, 1]

  so Y lies in [16/255, 235/255]. It is computed here in float64 from the 8-bit RGB values. (The official script
  does the matrix product in float32 and then casts to float64; the two differ by ~1e-7 in Y, below 1e-5 dB of
  PSNR.) No border is cropped unless the caller asks for one.

* **PSNR** is ``10 log10(1 / MSE)`` on Y in [0, 1]. pyiqa 0.1.10 adds ``eps = 1e-8`` to the MSE, which caps
  identical images at 80 dB and moves a 40 dB result by ~4e-4 dB; basicsr and the textbook definition use no
  epsilon and give ``inf``. ``eps`` is a parameter (default 0, the textbook value) and is recorded in reports.

* **SSIM** uses the 11x11 Gaussian window with sigma 1.5 (normalised to sum 1), K1 = 0.01, K2 = 0.03, the
  "valid" part of the filtered maps only (no padding), and the mean of the SSIM map. Both reference
  implementations work on **Y scaled to [0, 255]** with ``C1 = (0.01*255)^2``, ``C2 = (0.03*255)^2`` and float64
  maps. Scaling alone does not change SSIM (the constants scale with the range); what differs is:

  - ``convention="pyiqa"`` (pyiqa 0.1.10 ``ssim``, the numbers XPSR reports): Y*255 is **rounded to integer
    levels** before filtering (to imitate MATLAB's uint8 input), and the contrast-structure term is clamped at
    zero (``relu``) so the map is never negative.
  - ``convention="basicsr"`` (basicsr ``calculate_ssim`` and ``skimage.metrics.structural_similarity`` with
    ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255``): Y*255 unrounded, no clamp.

  pyiqa stores its window in float32; here the window is float64 (a ~1e-8 relative difference in SSIM).

Everything in this module is NumPy/SciPy float64: these metrics are cheap, and exact reproducibility of
published numbers matters more than speed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# BT.601 studio-swing luma coefficients for RGB in [0, 1], output in [0, 255] before the +16 offset.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_Y_OFFSET = 16.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_CONVENTIONS = ("pyiqa", "basicsr")
COLOUR_SPACES = ("y", "rgb")


def to_float01(img: np.ndarray) -> np.ndarray:
    """An image as float64 in [0, 1]: uint8 is divided by 255, uint16 by 65535, floats are taken as they are."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float64) / 65535.0
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float64)
    raise TypeError(f"expected a uint8, uint16 or float image, got {img.dtype}")


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an HxWx3 RGB image, float64 in [16/255, 235/255] (see the module docstring)."""
    rgb = to_float01(img)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    return (rgb @ _Y_WEIGHTS + _Y_OFFSET) / 255.0


def shave(img: np.ndarray, border: int) -> np.ndarray:
    """Drop ``border`` pixels from each side (the "crop_border" of basicsr/pyiqa); 0 keeps the image."""
    if border < 0:
        raise ValueError(f"crop border must be >= 0, got {border}")
    if border == 0:
        return img
    if min(img.shape[:2]) <= 2 * border:
        raise ValueError(f"crop border {border} leaves nothing of a {img.shape[0]}x{img.shape[1]} image")
    return img[border:-border, border:-border, ...]


def _planes(img: np.ndarray, colour_space: str) -> np.ndarray:
    """HxWxC float64 planes in [0, 1] on which the metric is computed (C = 1 for Y, 3 for RGB)."""
    if colour_space == "y":
        return rgb_to_y(img)[..., None]
    if colour_space == "rgb":
        rgb = to_float01(img)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
        return rgb
    raise ValueError(f"colour space must be one of {COLOUR_SPACES}, got {colour_space!r}")


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if np.shape(pred) != np.shape(gt):
        raise ValueError(f"prediction {np.shape(pred)} and ground truth {np.shape(gt)} differ in shape")


def psnr(pred: np.ndarray, gt: np.ndarray, *, colour_space: str = "y", crop_border: int = 0,
         eps: float = 0.0) -> float:
    """Peak signal-to-noise ratio in dB with a peak of 1 (images in [0, 1], or uint8 / uint16).

    ``colour_space="y"`` measures the BT.601 luma (the SR convention), ``"rgb"`` all three channels.
    Identical images give ``inf`` with the default ``eps=0``; pass ``eps=1e-8`` for pyiqa 0.1.10's exact value.
    """
    _check_pair(pred, gt)
    a = shave(_planes(pred, colour_space), crop_border)
    b = shave(_planes(gt, colour_space), crop_border)
    mse = float(np.mean((a - b) ** 2)) + eps
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(1.0 / mse))


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian whose outer product is MATLAB's ``fspecial('gaussian', 11, 1.5)``."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return w / w.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 2-D filtering of an HxW plane, keeping only the positions where the window fits ("valid")."""
    # The window is symmetric, so correlation equals convolution; filtering with any boundary mode and then
    # cutting the half-window border yields exactly the valid part.
    half = len(w) // 2
    y = ndimage.correlate1d(x, w, axis=0, mode="constant")
    y = ndimage.correlate1d(y, w, axis=1, mode="constant")
    return y[half:-half, half:-half]


def ssim_map(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0, clamp_cs: bool = False) -> np.ndarray:
    """The SSIM map (valid region) of two HxW float64 planes on the scale ``data_range``."""
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {a.shape}")
    w = gaussian_window_1d()
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, w), _filter_valid(b, w)
    var_a = _filter_valid(a * a, w) - mu_a * mu_a
    var_b = _filter_valid(b * b, w) - mu_b * mu_b
    cov = _filter_valid(a * b, w) - mu_a * mu_b
    cs = (2.0 * cov + c2) / (var_a + var_b + c2)
    if clamp_cs:
        cs = np.maximum(cs, 0.0)
    luminance = (2.0 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1)
    return luminance * cs


def ssim(pred: np.ndarray, gt: np.ndarray, *, colour_space: str = "y", crop_border: int = 0,
         convention: str = "pyiqa") -> float:
    """Structural similarity (Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03) on Y*255 or per RGB channel.

    ``convention`` is ``"pyiqa"`` (round to integer levels, clamp the contrast-structure term at 0; what XPSR
    reports) or ``"basicsr"`` (unrounded, unclamped; equal to skimage's Gaussian SSIM). See the module docstring.
    With several channels the per-channel SSIM values are averaged.
    """
    if convention not in SSIM_CONVENTIONS:
        raise ValueError(f"SSIM convention must be one of {SSIM_CONVENTIONS}, got {convention!r}")
    _check_pair(pred, gt)
    a = shave(_planes(pred, colour_space), crop_border) * 255.0
    b = shave(_planes(gt, colour_space), crop_border) * 255.0
    pyiqa = convention == "pyiqa"
    if pyiqa:
        # NumPy rounds half to even, like torch.round in pyiqa.
        a, b = np.round(a), np.round(b)
    values = [ssim_map(a[..., c], b[..., c], clamp_cs=pyiqa).mean() for c in range(a.shape[-1])]
    return float(np.mean(values))


def describe(colour_space: str, crop_border: int, psnr_eps: float, ssim_convention: str) -> dict:
    """The settings behind a PSNR/SSIM number, for reports (every field changes the value)."""
    space = ("Y, ITU-R BT.601 studio swing [16/255, 235/255], float64" if colour_space == "y"
             else "RGB, all channels, [0, 1], float64")
    return {
        "psnr": {
            "implementation": "xpsr_jax.eval.metrics.psnr (NumPy float64)",
            "colour_space": space,
            "crop_border": crop_border,
            "data_range": 1.0,
            "eps": psnr_eps,
        },
        "ssim": {
            "implementation": "xpsr_jax.eval.metrics.ssim (NumPy/SciPy float64)",
            "colour_space": space,
            "crop_border": crop_border,
            "convention": ssim_convention,
            "scale": "[0, 255]" + (", rounded to integer levels, cs clamped >= 0" if ssim_convention == "pyiqa"
                                   else ", unrounded"),
            "window": f"Gaussian {SSIM_WINDOW}x{SSIM_WINDOW}, sigma {SSIM_SIGMA}, valid region",
            "k1_k2": [SSIM_K1, SSIM_K2],
        },
    }

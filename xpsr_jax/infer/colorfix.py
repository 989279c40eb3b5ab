"""Colour correction of the decoded image against the pre-processed LR image (§5.5, §8 item 20).

Both work on (H, W, 3) uint8 images of the same size and return uint8, in NumPy on the host (cheap next to the
networks, and no device memory at 4096²).

* ``adain``: per channel, (x - mean_x) / std_x * std_lr + mean_lr on [0, 1] floats, with std = sqrt(unbiased
  variance + 1e-5); clamped to [0, 1] and turned into bytes by *truncation* (x * 255 -> uint8), as torchvision's
  ``ToPILImage`` does. What the official test script always applies.
* ``wavelet``: keep the high frequencies of the output and take the low frequencies from the LR image. Five
  levels of an à-trous blur (3x3 kernel [1,2,1]x[1,2,1]/16 with dilation 1, 2, 4, 8, 16, replicate padding); the
  high band is the sum of what each level removed, the low band what the fifth level leaves. Same truncation.
"""

from __future__ import annotations

import numpy as np

ADAIN_EPS = 1e-5
WAVELET_LEVELS = 5


def _to_unit(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"colour fix: {what} must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    return img.astype(np.float32) / np.float32(255.0)


def _to_bytes(x: np.ndarray) -> np.ndarray:
    # ToPILImage: clamp to [0, 1], multiply by 255, cast to uint8 (truncation, not rounding)
    return (np.clip(x, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def _mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = x.reshape(-1, 3).astype(np.float64)
    mean = flat.mean(axis=0)
    var = flat.var(axis=0, ddof=1) if flat.shape[0] > 1 else np.zeros(3)
    return mean.astype(np.float32), np.sqrt(var + ADAIN_EPS).astype(np.float32)


def adain_color_fix(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """image, reference: (H, W, 3) uint8 of one size -> image with the reference's per-channel mean and std."""
    x, ref = _to_unit(image, "image"), _to_unit(reference, "reference")
    if x.shape != ref.shape:
        raise ValueError(f"colour fix: image {x.shape} and reference {ref.shape} differ in size")
    mx, sx = _mean_std(x)
    mr, sr = _mean_std(ref)
    return _to_bytes((x - mx) / sx * sr + mr)


def wavelet_blur(x: np.ndarray, radius: int) -> np.ndarray:
    """(H, W, C) float -> the 3x3 [1,2,1]x[1,2,1]/16 blur with taps ``radius`` apart, edges replicated."""
    h, w = x.shape[:2]
    p = np.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    out = np.zeros_like(x)
    taps = ((0, 0.25), (radius, 0.5), (2 * radius, 0.25))  # separable [1, 2, 1] / 4 on each axis
    for dy, wy in taps:
        for dx, wx in taps:
            out += np.float32(wy * wx) * p[dy:dy + h, dx:dx + w]
    return out


def wavelet_decompose(x: np.ndarray, levels: int = WAVELET_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) float -> (high, low) with high + low == x (up to rounding)."""
    high = np.zeros_like(x)
    low = x
    for i in range(levels):
        blurred = wavelet_blur(low, 2 ** i)
        high += low - blurred
        low = blurred
    return high, low


def wavelet_color_fix(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """image, reference: (H, W, 3) uint8 of one size -> the image's high band on the reference's low band."""
    x, ref = _to_unit(image, "image"), _to_unit(reference, "reference")
    if x.shape != ref.shape:
        raise ValueError(f"colour fix: image {x.shape} and reference {ref.shape} differ in size")
    high, _ = wavelet_decompose(x)
    _, low = wavelet_decompose(ref)
    return _to_bytes(high + low)


def color_fix(kind: str, image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Dispatch on ``kind`` in ("adain", "wavelet", "none")."""
    if kind == "adain":
        return adain_color_fix(image, reference)
    if kind == "wavelet":
        return wavelet_color_fix(image, reference)
    if kind == "none":
        return np.asarray(image, np.uint8)
    raise ValueError(f"unknown colour fix {kind!r}; expected adain, wavelet or none")

"""Image resizing with the exact semantics of PyTorch's ``F.interpolate`` (align_corners=False, no antialias).

The reference degrades images with ``F.interpolate`` in modes ``area``, ``bilinear`` and ``bicubic``. OpenCV and
PIL differ from it (PIL's bicubic uses a = -0.5 and widens its support when shrinking; OpenCV maps a ``fx`` scale to a
rounded size while PyTorch floors it and keeps 1/scale as the coordinate step), so resizing is written here as one
(out, in) weight matrix per axis, applied as two matrix products. The matrices reproduce PyTorch:

* ``area``: adaptive average pooling, output i averages inputs floor(i·in/out) … ceil((i+1)·in/out) - 1.
* ``bilinear``: source x = max(0, s·(i + 0.5) - 0.5), two taps, the right one clamped to the last pixel.
* ``bicubic``: source x = s·(i + 0.5) - 0.5, Keys cubic with a = -0.75, four taps clamped to [0, in - 1].

s is 1/scale_factor when a scale factor is given (then out = floor(in·scale)), else in/out; PyTorch computes the
source coordinate in float32, which is mirrored here so floors land on the same pixel.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import sparse

MODES = ("area", "bilinear", "bicubic")
_CUBIC_A = -0.75


def output_size(in_size: int, scale_factor: float) -> int:
    """Size PyTorch gives an axis of ``in_size`` pixels resized by ``scale_factor`` (floored)."""
    return int(math.floor(in_size * float(scale_factor)))


def _source_coords(in_size: int, out_size: int, scale_factor: float | None) -> np.ndarray:
    step = np.float32(1.0 / scale_factor) if scale_factor else np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    return step * (dst + np.float32(0.5)) - np.float32(0.5)


def _area_weights(in_size: int, out_size: int) -> np.ndarray:
    w = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size  # exact integer floor/ceil, as PyTorch's adaptive pooling
        end = -((-(i + 1) * in_size) // out_size)
        w[i, start:end] = 1.0 / (end - start)
    return w


def _bilinear_weights(in_size: int, out_size: int, scale_factor: float | None) -> np.ndarray:
    src = np.maximum(_source_coords(in_size, out_size, scale_factor), np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float64)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    w = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(w, (rows, i0), 1.0 - lam)
    np.add.at(w, (rows, i1), lam)
    return w


def _cubic_taps(t: np.ndarray) -> np.ndarray:
    """(n, 4) Keys weights for fractional offsets t ∈ [0, 1] at taps -1, 0, 1, 2."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def _bicubic_weights(in_size: int, out_size: int, scale_factor: float | None) -> np.ndarray:
    src = _source_coords(in_size, out_size, scale_factor)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    t = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float64)
    taps = _cubic_taps(t)
    w = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    for k in range(4):  # out-of-range taps read the border pixel (PyTorch clamps the index)
        np.add.at(w, (rows, np.clip(i0 + k - 1, 0, in_size - 1)), taps[:, k])
    return w


def axis_weights(in_size: int, out_size: int, mode: str, scale_factor: float | None = None) -> np.ndarray:
    """(out_size, in_size) float32 matrix that resizes one axis like ``F.interpolate``."""
    if mode == "area":
        w = _area_weights(in_size, out_size)
    elif mode == "bilinear":
        w = _bilinear_weights(in_size, out_size, scale_factor)
    elif mode == "bicubic":
        w = _bicubic_weights(in_size, out_size, scale_factor)
    else:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {MODES}")
    return w.astype(np.float32)


def resize(img: np.ndarray, size: tuple[int, int] | None = None, scale_factor: float | None = None,
           mode: str = "bicubic") -> np.ndarray:
    """Resize an (H, W) or (H, W, C) float image to ``size`` = (out_h, out_w) or by ``scale_factor``.

    Exactly one of ``size`` and ``scale_factor`` is given, as for ``F.interpolate``. Returns float32; bicubic can
    overshoot the input range (no clamping, as in PyTorch).
    """
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size and scale_factor")
    img = np.asarray(img, dtype=np.float32)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    h, w, c = img.shape
    if size is None:
        out_h, out_w = output_size(h, scale_factor), output_size(w, scale_factor)
        step = scale_factor
    else:
        out_h, out_w = int(size[0]), int(size[1])
        step = None
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resizing {h}x{w} gives an empty image {out_h}x{out_w}")
    out = _apply_rows(img, axis_weights(h, out_h, mode, step))
    # columns: bring W to the front so the same row operation applies, then put it back
    out = _apply_rows(out.transpose(1, 0, 2), axis_weights(w, out_w, mode, step)).transpose(1, 0, 2)
    out = np.ascontiguousarray(out)
    return out[:, :, 0] if squeeze else out


def _apply_rows(img: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Resize axis 0 of an (H, W, C) image with an (out, H) weight matrix -> (out, W, C) float32.

    Each output row uses only a few input rows (2 bilinear, 4 bicubic, about in/out + 1 area), so a sparse
    product is an order of magnitude cheaper than a dense one. An identity matrix (same size) is skipped.
    """
    h, w, c = img.shape
    if weights.shape[0] == h and np.array_equal(weights, np.eye(h, dtype=weights.dtype)):
        return img
    flat = np.ascontiguousarray(img).reshape(h, w * c)
    return np.asarray(sparse.csr_matrix(weights) @ flat, dtype=np.float32).reshape(-1, w, c)

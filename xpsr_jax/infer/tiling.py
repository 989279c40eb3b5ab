"""Tile layouts (pure index arithmetic, no arrays of pixels).

Two kinds, one per use:

* **blended windows** for the denoiser (§5.4): windows of ``tile`` pixels every ``tile - overlap`` pixels, the
  last one flush with the border; every window's prediction is weighted by a Gaussian map and the sum divided by
  the summed weights, so neighbouring tiles cross-fade inside their overlap;
* **core windows** for the VAE: the axis is cut into cores that partition it; each core is computed inside a
  window that adds ``context`` pixels on both sides where the image allows, and only the core is kept. All
  windows of an axis have one length, so one compiled function serves every tile.

Lengths and positions are in latent pixels; the VAE encoder multiplies them by 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def blend_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts along one axis: 0, s, 2s, ... (s = tile - overlap) with the last window flush at the end."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile={tile})")
    stride = tile - overlap
    n = 1 + math.ceil((length - tile) / stride)
    return [min(i * stride, length - tile) for i in range(n)]


def gaussian_weights(height: int, width: int, official: bool = False) -> np.ndarray:
    """(height, width) float32 blending weights: a separable Gaussian of variance 0.01 in units of the tile side.

    Centred at ((W-1)/2, (H-1)/2). ``official=True`` centres rows at H/2 instead, as the official pipeline
    (copied from Mixture-of-Diffusers) does. Values are normalised so the peak is about 1 (the absolute scale
    cancels in the weighted average).
    """
    var = 0.01

    def axis(n: int, mid: float) -> np.ndarray:
        x = np.arange(n, dtype=np.float64)
        return np.exp(-((x - mid) ** 2) / (n * n) / (2 * var))

    rows = axis(height, height / 2 if official else (height - 1) / 2)
    cols = axis(width, (width - 1) / 2)
    return np.outer(rows, cols).astype(np.float32)


@dataclass(frozen=True)
class BlendLayout:
    """Denoiser tiles over an (h, w) latent: ``tile`` (th, tw), ``offsets`` [(y, x), ...], ``weights`` (th, tw)
    and ``norm`` (h, w) = 1 / the summed weights at each latent pixel."""

    shape: tuple[int, int]
    tile: tuple[int, int]
    offsets: tuple[tuple[int, int], ...]
    weights: np.ndarray
    norm: np.ndarray

    @property
    def count(self) -> int:
        return len(self.offsets)


def blend_layout(shape: tuple[int, int], tile: int, overlap: int, official_weights: bool = False) -> BlendLayout:
    """Tiles of side ``tile`` (clipped to the latent) over a latent of ``shape`` (h, w)."""
    h, w = shape
    th, tw = min(tile, h), min(tile, w)
    ys = blend_starts(h, th, min(overlap, th - 1))
    xs = blend_starts(w, tw, min(overlap, tw - 1))
    offsets = tuple((y, x) for y in ys for x in xs)
    weights = gaussian_weights(th, tw, official_weights)
    total = np.zeros((h, w), np.float64)
    for y, x in offsets:
        total[y:y + th, x:x + tw] += weights
    return BlendLayout(shape, (th, tw), offsets, weights, (1.0 / total).astype(np.float32))


@dataclass(frozen=True)
class CoreWindow:
    """One axis of a VAE tile: the window [start, start + size) is computed, [core_lo, core_hi) is kept."""

    start: int
    core_lo: int
    core_hi: int


def core_windows(length: int, tile: int, context: int) -> tuple[int, list[CoreWindow]]:
    """Cut an axis of ``length`` into windows of one size <= ``tile`` whose cores partition the axis.

    Each core has ``context`` pixels of real image on both sides inside its window, except at the image border.
    Returns (window size, windows). A window covering the whole axis has no context to add and is returned alone.
    """
    if tile >= length:
        return length, [CoreWindow(0, 0, length)]
    context = min(context, (tile - 1) // 2)
    core = tile - 2 * context
    n = math.ceil(length / core)
    bounds = [round(i * length / n) for i in range(n + 1)]  # near-equal cores, each <= core
    windows = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        start = min(max(lo - context, 0), length - tile)
        windows.append(CoreWindow(start, lo, hi))
    return tile, windows


@dataclass(frozen=True)
class CoreLayout:
    """VAE tiles over an (h, w) latent: window size (th, tw) and, per tile, (y window, x window)."""

    shape: tuple[int, int]
    tile: tuple[int, int]
    tiles: tuple[tuple[CoreWindow, CoreWindow], ...]

    @property
    def count(self) -> int:
        return len(self.tiles)


def core_layout(shape: tuple[int, int], tile: int, context: int) -> CoreLayout:
    h, w = shape
    th, ys = core_windows(h, tile, context)
    tw, xs = core_windows(w, tile, context)
    return CoreLayout(shape, (th, tw), tuple((y, x) for y in ys for x in xs))

"""The VAE, whole or in tiles, with one set of GroupNorm statistics shared by all tiles.

Why shared statistics: each GroupNorm of the VAE normalises with the mean and variance of the *whole* feature map.
A tile computed on its own normalises with its own statistics, so neighbouring tiles come out with different
brightness and contrast: a visible seam even where the pixels overlap. (The official code's tiled VAE therefore
merges the statistics of all tiles before every GroupNorm.) Here, in two passes over the tiles:

1. *collect*: every tile runs with its own statistics and reports, for every GroupNorm call in order, the count,
   mean and centred sum of squares of its **core** (the part that is kept), per image and group;
2. the per-tile numbers are merged exactly (Chan's parallel formula) into one mean/variance per GroupNorm call,
   which is what an untiled run of these activations would see;
3. *apply*: every tile runs again with those merged statistics and its core is kept.

The only differences to an untiled run are then (a) the activations feeding the statistics in pass 1 were
normalised per tile, a second-order effect, (b) convolutions near a core edge see ``context`` latent pixels of real
neighbours instead of the whole image, and (c) the mid-block self-attention sees only its window. The test in
``tests/test_infer.py`` bounds the resulting difference. GroupNorm calls are intercepted with
``flax.linen.intercept_methods``, so the VAE model itself is untouched.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xpsr_jax.infer.tiling import CoreLayout
from xpsr_jax.models.vae import AutoencoderKL
from xpsr_jax.models.vae_config import VAEConfig
from xpsr_jax.nn.layers import GroupNorm

Stats = list[tuple[np.ndarray, np.ndarray]]  # per GroupNorm call: mean, var, each (B, groups)


def _grouped(x: jax.Array, groups: int) -> jax.Array:
    b, h, w, c = x.shape
    return x.astype(jnp.float32).reshape(b, h, w, groups, c // groups)


def _params_of(module: GroupNorm) -> tuple[jax.Array, jax.Array]:
    p = nn.unbox(module.variables["params"])
    return p["scale"], p["bias"]


def _normalise(module: GroupNorm, x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
    """GroupNorm with given statistics: mean, var (B, groups) -> y like ``GroupNorm.__call__``."""
    g = _grouped(x, module.num_groups)
    g = (g - mean[:, None, None, :, None]) * jax.lax.rsqrt(var[:, None, None, :, None] + module.epsilon)
    scale, bias = _params_of(module)
    y = g.reshape(x.shape) * scale + bias
    return y.astype(module.dtype or x.dtype)


def _core_mask(x: jax.Array, core: jax.Array, tile_hw: tuple[int, int]) -> jax.Array:
    """(h', w') bool: the tile's core at this activation's resolution. core = (y0, y1, x0, x1) in latent units
    relative to the window; the activation is an integer multiple (or fraction) of the latent tile."""
    h, w = x.shape[1:3]
    th, tw = tile_hw
    rows = jnp.arange(h) * th  # row r covers latent rows [r*th/h, (r+1)*th/h): compare scaled
    cols = jnp.arange(w) * tw
    in_rows = (rows >= core[0] * h) & (rows < core[1] * h)
    in_cols = (cols >= core[2] * w) & (cols < core[3] * w)
    return in_rows[:, None] & in_cols[None, :]


def _core_stats(module: GroupNorm, x: jax.Array, mask: jax.Array):
    """(count, mean (B,G), centred sum of squares (B,G)) of x over the mask."""
    g = _grouped(x, module.num_groups)
    m = mask[None, :, :, None, None].astype(jnp.float32)
    count = jnp.sum(mask).astype(jnp.float32) * g.shape[-1]
    mean = jnp.sum(g * m, axis=(1, 2, 4)) / count
    m2 = jnp.sum(jnp.square(g - mean[:, None, None, :, None]) * m, axis=(1, 2, 4))
    return count, mean, m2


def _run(model: AutoencoderKL, method: str, params, x, interceptor):
    fn = AutoencoderKL.encode if method == "encode" else AutoencoderKL.decode
    with nn.intercept_methods(interceptor):
        out = model.apply({"params": params}, x, method=fn)
    return out


def _is_groupnorm(context) -> bool:
    return isinstance(context.module, GroupNorm) and context.method_name == "__call__"


@functools.lru_cache(maxsize=32)
def _collect_fn(model: AutoencoderKL, method: str, tile_hw: tuple[int, int]):
    def fn(params, x, core):
        found = []

        def interceptor(next_fun, args, kwargs, context):
            if not _is_groupnorm(context):
                return next_fun(*args, **kwargs)
            module, h = context.module, args[0]
            count, mean, m2 = _core_stats(module, h, _core_mask(h, core, tile_hw))
            found.append((count, mean, m2))
            return _normalise(module, h, mean, m2 / count)

        _run(model, method, params, x, interceptor)  # the output is dead code: only the statistics are kept
        return found

    return jax.jit(fn)


@functools.lru_cache(maxsize=32)
def _apply_fn(model: AutoencoderKL, method: str):
    def fn(params, x, stats):
        calls = iter(stats)

        def interceptor(next_fun, args, kwargs, context):
            if not _is_groupnorm(context):
                return next_fun(*args, **kwargs)
            mean, var = next(calls)
            return _normalise(context.module, args[0], mean, var)

        out = _run(model, method, params, x, interceptor)
        return (out.mean, out.logvar) if method == "encode" else out

    return jax.jit(fn)


@functools.lru_cache(maxsize=32)
def _plain_fn(model: AutoencoderKL, method: str):
    def fn(params, x):
        out = _run(model, method, params, x, lambda nf, a, k, c: nf(*a, **k))
        return (out.mean, out.logvar) if method == "encode" else out

    return jax.jit(fn)


def merge_stats(per_tile: list[list[tuple[Any, Any, Any]]]) -> Stats:
    """Per tile, per GroupNorm call (count, mean, m2) -> per call (mean, var) of the union of the cores."""
    merged = []
    for calls in zip(*per_tile):
        counts = np.array([float(c) for c, _, _ in calls])
        means = np.stack([np.asarray(m, np.float64) for _, m, _ in calls])  # (T, B, G)
        m2s = np.stack([np.asarray(s, np.float64) for _, _, s in calls])
        total = counts.sum()
        mean = np.einsum("t,tbg->bg", counts, means) / total
        m2 = m2s.sum(0) + np.einsum("t,tbg->bg", counts, np.square(means - mean))
        merged.append((mean.astype(np.float32), (m2 / total).astype(np.float32)))
    return merged


class TiledVAE:
    """Encode/decode NHWC arrays whole (``layout=None``) or tile by tile with shared GroupNorm statistics.

    encode: images (B, 8h, 8w, 3) in [-1, 1] -> (mean, logvar) (B, h, w, latent), the posterior's moments.
    decode: unscaled latents (B, h, w, latent) -> images (B, 8h, 8w, 3), roughly [-1, 1].
    Tiled results are assembled in host memory (NumPy), so the device holds one tile at a time.
    """

    def __init__(self, config: VAEConfig, params, attention_impl: str = "auto"):
        self.config = config
        self.params = params
        self.model = AutoencoderKL(config, attention_impl=attention_impl, dtype=jnp.float32)
        self.factor = config.downsample_factor

    def encode(self, images, layout: CoreLayout | None = None):
        if layout is None:
            return _plain_fn(self.model, "encode")(self.params, jnp.asarray(images, jnp.float32))
        b = images.shape[0]
        mean = np.zeros((b, *layout.shape, self.config.latent_channels), np.float32)
        logvar = np.zeros_like(mean)
        for (ys, xs), (m, lv) in self._tiled("encode", images, layout):
            mean[:, ys, xs], logvar[:, ys, xs] = m, lv
        return jnp.asarray(mean), jnp.asarray(logvar)

    def decode(self, latents, layout: CoreLayout | None = None):
        if layout is None:
            return _plain_fn(self.model, "decode")(self.params, jnp.asarray(latents, jnp.float32))
        f = self.factor
        b = latents.shape[0]
        out = np.zeros((b, layout.shape[0] * f, layout.shape[1] * f, self.config.out_channels), np.float32)
        for (ys, xs), img in self._tiled("decode", latents, layout):
            out[:, ys.start * f:ys.stop * f, xs.start * f:xs.stop * f] = img
        return jnp.asarray(out)

    def _windows(self, x, layout: CoreLayout, scale: int):
        th, tw = layout.tile
        for wy, wx in layout.tiles:
            window = x[:, wy.start * scale:(wy.start + th) * scale, wx.start * scale:(wx.start + tw) * scale]
            core = np.array([wy.core_lo - wy.start, wy.core_hi - wy.start,
                             wx.core_lo - wx.start, wx.core_hi - wx.start], np.int32)
            yield wy, wx, jnp.asarray(window, jnp.float32), core

    def _tiled(self, method: str, x, layout: CoreLayout):
        scale = self.factor if method == "encode" else 1
        x = np.asarray(x, np.float32)
        collect = _collect_fn(self.model, method, layout.tile)
        per_tile = [jax.device_get(collect(self.params, w, jnp.asarray(c)))
                    for _, _, w, c in self._windows(x, layout, scale)]
        stats = [(jnp.asarray(m), jnp.asarray(v)) for m, v in merge_stats(per_tile)]
        apply = _apply_fn(self.model, method)
        out_scale = 1 if method == "encode" else self.factor
        for wy, wx, window, core in self._windows(x, layout, scale):
            res = jax.device_get(apply(self.params, window, stats))
            keep = lambda a: a[:, core[0] * out_scale:core[1] * out_scale,  # noqa: E731
                               core[2] * out_scale:core[3] * out_scale]
            res = tuple(keep(a) for a in res) if isinstance(res, tuple) else keep(res)
            yield (slice(wy.core_lo, wy.core_hi), slice(wx.core_lo, wx.core_hi)), res

"""The denoising loop: ControlNet + UNet with dual-stream CFG, one sampler step per timestep, as one ``lax.scan``.

One compiled program per (model, sampler, latent size, batch, tile layout): the loop never recompiles per step.

CFG layout: every image contributes an (uncond, cond) pair, interleaved along the batch ([u0, c0, u1, c1, ...]),
with E_high = (negative high-level, positive high-level) and E_low = (fixed low-level negative, low-level
prompt), the same latent and the same LR image in both rows (§5.3). Interleaving keeps an image's pair on one
device when the batch is sharded; the networks treat rows independently, so this equals the official
[all uncond, all cond] layout. eps = eps_u + g * (eps_c - eps_u).

Tiles (§5.4): with :class:`LatentTiles`, each window of the latent and its 8x LR crop are denoised separately,
``batch`` windows per network call, and the predictions are blended with the layout's Gaussian weights.

What steers the calls travels as one :class:`Conditions` (a NamedTuple, hence a pytree that crosses ``jit`` as one
argument); the tile settings are a hashable :class:`LatentTiles`, a static choice that selects the program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Iterator, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xpsr_jax.diffusion import Sampler, make_sampler
from xpsr_jax.infer import noise
from xpsr_jax.infer.tiling import BlendLayout, blend_layout
from xpsr_jax.models.xpsr import XPSR


@contextlib.contextmanager
def images_over(mesh) -> Iterator[None]:
    """Trace a sampling call whose images are split over ``mesh``'s ``batch`` axis: under the mesh (so the
    attention layer knows the platform: "auto" takes splash on TPU) with the logical batch axis on it (splash runs
    per device in a shard_map over it; XLA cannot partition a Pallas kernel itself)."""
    from xpsr_jax.nn import axes

    with jax.set_mesh(mesh), nn.logical_axis_rules(((axes.BATCH, "batch"),)):
        yield


class Conditions(NamedTuple):
    """What steers every denoiser call of one image batch (B images).

    lr (B,8h,8w,3): the LR image in [0,1], the ControlNet's condition; e_high, e_low (B,2,77,D): the
    [negative, positive] high- and low-level text embeddings; guidance_scale, conditioning_scale: float32 scalars
    (CFG weight g, ControlNet residual scale).
    """

    lr: jax.Array
    e_high: jax.Array
    e_low: jax.Array
    guidance_scale: jax.Array
    conditioning_scale: jax.Array


@dataclasses.dataclass(frozen=True)
class LatentTiles:
    """Denoiser tiles over a latent of ``latent_hw`` (h, w): windows of side ``tile`` overlapping by ``overlap``,
    ``batch`` windows per network call; ``official_weights`` picks the official Gaussian (see
    :func:`~xpsr_jax.infer.tiling.gaussian_weights`). Hashable: one compiled loop per distinct value."""

    latent_hw: tuple[int, int]
    tile: int
    overlap: int
    official_weights: bool = False
    batch: int = 1

    def layout(self) -> BlendLayout:
        return blend_layout(self.latent_hw, self.tile, self.overlap, self.official_weights)


def _guided_eps(model: XPSR, params, z, t, conds: Conditions):
    """z (N,h,w,4) at timestep t, ``conds`` for N images -> guided eps (N,h,w,4) float32."""
    n = z.shape[0]
    zz = jnp.repeat(z, 2, axis=0)
    cc = jnp.repeat(conds.lr, 2, axis=0)
    eh = conds.e_high.reshape(2 * n, *conds.e_high.shape[2:])
    el = conds.e_low.reshape(2 * n, *conds.e_low.shape[2:])
    tt = jnp.full((2 * n,), t, jnp.float32)
    eps, _ = model.denoise(params, zz, tt, eh, el, cc, conds.conditioning_scale)
    eps = eps.astype(jnp.float32).reshape(n, 2, *eps.shape[1:])
    return eps[:, 0] + conds.guidance_scale * (eps[:, 1] - eps[:, 0])


def _tiled_eps(model: XPSR, params, z, t, conds: Conditions, tiles: LatentTiles):
    """The guided eps of the whole latent z (B,h,w,4) from overlapping windows, blended with Gaussian weights."""
    layout = tiles.layout()
    b, h, w, c = z.shape
    th, tw = layout.tile
    cond = conds.lr
    k = max(1, min(tiles.batch, layout.count))
    chunks = math.ceil(layout.count / k)
    offsets = np.array(layout.offsets + (layout.offsets[-1],) * (chunks * k - layout.count), np.int32)
    valid = (np.arange(chunks * k) < layout.count).astype(np.float32)
    weights = jnp.asarray(layout.weights)[None, None, :, :, None]

    def windows(off):
        y, x = off[0], off[1]
        zt = jax.lax.dynamic_slice(z, (0, y, x, 0), (b, th, tw, c))
        ct = jax.lax.dynamic_slice(cond, (0, 8 * y, 8 * x, 0), (b, 8 * th, 8 * tw, cond.shape[-1]))
        return zt, ct

    def chunk(args):
        offs, ok = args
        zt, ct = jax.vmap(windows)(offs)  # (k, B, th, tw, c), (k, B, 8th, 8tw, 3)
        rep = lambda a: jnp.broadcast_to(a[None], (k, *a.shape)).reshape(k * b, *a.shape[1:])  # noqa: E731
        window_conds = conds._replace(lr=ct.reshape(k * b, *ct.shape[2:]), e_high=rep(conds.e_high),
                                      e_low=rep(conds.e_low))
        eps = _guided_eps(model, params, zt.reshape(k * b, th, tw, c), t, window_conds)
        return eps.reshape(k, b, th, tw, c) * weights * ok[:, None, None, None, None]

    preds = jax.lax.map(chunk, (offsets.reshape(chunks, k, 2), valid.reshape(chunks, k)))
    preds = preds.reshape(chunks * k, b, th, tw, c)

    offsets_dev = jnp.asarray(offsets)

    def add(i, acc):
        y, x = offsets_dev[i, 0], offsets_dev[i, 1]
        cur = jax.lax.dynamic_slice(acc, (0, y, x, 0), (b, th, tw, c))
        return jax.lax.dynamic_update_slice(acc, cur + preds[i], (0, y, x, 0))

    acc = jax.lax.fori_loop(0, chunks * k, add, jnp.zeros((b, h, w, c), jnp.float32))
    return acc * jnp.asarray(layout.norm)[None, :, :, None]


def build_loop(model: XPSR, sampler: Sampler, tiles: LatentTiles | None = None):
    """A jitted ``loop(params, z, conds, step_keys) -> z_0``.

    z (B,h,w,4) float32 start latent; conds: :class:`Conditions` of the B images; step_keys (B,) keys of the
    STEPS role (:mod:`xpsr_jax.infer.noise`); ``tiles`` None denoises the whole latent.
    Returns the final latent (B,h,w,4) float32 (scaled, i.e. what the VAE decodes after / scaling_factor).
    """
    timesteps = jnp.asarray(sampler.timesteps, jnp.int32)
    indices = jnp.arange(len(sampler.timesteps), dtype=jnp.int32)

    def loop(params, z, conds: Conditions, step_keys):
        dtype = model.dtype or jnp.float32
        conds = conds._replace(lr=conds.lr.astype(dtype), e_high=conds.e_high.astype(dtype),
                               e_low=conds.e_low.astype(dtype))

        def eps_fn(zc, t):
            if tiles is None:
                return _guided_eps(model, params, zc, t, conds)
            return _tiled_eps(model, params, zc, t, conds, tiles)

        def body(carry, xs):
            zc, state = carry
            t, i = xs
            eps = eps_fn(zc, t)
            step_noise = noise.step_noise(step_keys, i, zc.shape[1:]) if sampler.uses_noise else None
            zc, state = sampler.step(state, eps, t, zc, step_noise)
            return (zc, state), None

        (z, _), _ = jax.lax.scan(body, (z, sampler.init_state(z)), (timesteps, indices))
        return z

    return jax.jit(loop)


@functools.lru_cache(maxsize=16)
def cached_loop(model: XPSR, sampler: str, steps: int, eta: float, tiles: LatentTiles | None = None):
    """:func:`build_loop` memoised on hashable arguments, so pipelines that share a model share its compiles."""
    return build_loop(model, make_sampler(sampler, steps, eta=eta), tiles)

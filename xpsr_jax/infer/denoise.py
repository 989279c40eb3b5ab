"""The denoising loop: ControlNet + UNet with dual-stream CFG, one sampler step per timestep, as one ``lax.scan``.

One compiled program per (model, sampler, latent size, batch, tile layout): the loop never recompiles per step.

CFG layout: every image contributes an (uncond, cond) pair, interleaved along the batch ([u0, c0, u1, c1, ...]),
with E_high = (negative high-level, positive high-level) and E_low = (fixed low-level negative, low-level
prompt), the same latent and the same LR image in both rows (§5.3). Interleaving keeps an image's pair on one
device when the batch is sharded; the networks treat rows independently, so this equals the official
[all uncond, all cond] layout. eps = eps_u + g * (eps_c - eps_u).

Tiles (§5.4): with a :class:`~xpsr_jax.infer.tiling.BlendLayout`, each window of the latent and its 8x LR crop
are denoised separately, ``tile_batch`` windows per network call, and the predictions are blended with the
layout's Gaussian weights.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from xpsr_jax.diffusion import Sampler, make_sampler
from xpsr_jax.infer import noise
from xpsr_jax.infer.tiling import BlendLayout, blend_layout
from xpsr_jax.models.xpsr import XPSR


def _guided_eps(model: XPSR, params, z, cond, e_high, e_low, t, guidance, cscale):
    """z (N,h,w,4), cond (N,8h,8w,3), e_high/e_low (N,2,77,D) [neg, pos] -> guided eps (N,h,w,4) float32."""
    n = z.shape[0]
    zz = jnp.repeat(z, 2, axis=0)
    cc = jnp.repeat(cond, 2, axis=0)
    eh = e_high.reshape(2 * n, *e_high.shape[2:])
    el = e_low.reshape(2 * n, *e_low.shape[2:])
    tt = jnp.full((2 * n,), t, jnp.float32)
    eps, _ = model.denoise(params, zz, tt, eh, el, cc, cscale)
    eps = eps.astype(jnp.float32).reshape(n, 2, *eps.shape[1:])
    return eps[:, 0] + guidance * (eps[:, 1] - eps[:, 0])


def _tiled_eps(model: XPSR, layout: BlendLayout, tile_batch: int, params, z, cond, e_high, e_low, t, guidance,
               cscale):
    """The guided eps of the whole latent from overlapping windows, blended with Gaussian weights."""
    b, h, w, c = z.shape
    th, tw = layout.tile
    k = max(1, min(tile_batch, layout.count))
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
        eps = _guided_eps(model, params, zt.reshape(k * b, th, tw, c), ct.reshape(k * b, *ct.shape[2:]),
                          rep(e_high), rep(e_low), t, guidance, cscale)
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


def build_loop(model: XPSR, sampler: Sampler, layout: BlendLayout | None = None, tile_batch: int = 1):
    """A jitted ``loop(params, z, cond, e_high, e_low, step_keys, guidance, cscale) -> z_0``.

    z (B,h,w,4) float32 start latent; cond (B,8h,8w,3) LR image in [0,1]; e_high, e_low (B,2,77,D) [neg, pos];
    step_keys (B,) keys of the STEPS role (:mod:`xpsr_jax.infer.noise`); guidance, cscale: float32 scalars.
    Returns the final latent (B,h,w,4) float32 (scaled, i.e. what the VAE decodes after / scaling_factor).
    """
    timesteps = jnp.asarray(sampler.timesteps, jnp.int32)
    indices = jnp.arange(len(sampler.timesteps), dtype=jnp.int32)

    def loop(params, z, cond, e_high, e_low, step_keys, guidance, cscale):
        cond = cond.astype(model.dtype or jnp.float32)
        e_high = e_high.astype(model.dtype or jnp.float32)
        e_low = e_low.astype(model.dtype or jnp.float32)

        def eps_fn(zc, t):
            if layout is None:
                return _guided_eps(model, params, zc, cond, e_high, e_low, t, guidance, cscale)
            return _tiled_eps(model, layout, tile_batch, params, zc, cond, e_high, e_low, t, guidance, cscale)

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
def cached_loop(model: XPSR, sampler: str, steps: int, eta: float, tiles: tuple | None = None,
                tile_batch: int = 1):
    """:func:`build_loop` memoised on hashable arguments, so pipelines that share a model share its compiles.

    tiles: None (whole latent) or (latent (h, w), tile side, overlap, official_weights) for a BlendLayout.
    """
    layout = None if tiles is None else blend_layout(*tiles)
    return build_loop(model, make_sampler(sampler, steps, eta=eta), layout, tile_batch)

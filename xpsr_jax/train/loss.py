"""XPSR's training loss (reference §4.4): diffusion MSE + 16 Degradation-Free-Constraint L1 terms, in fp32.

    L = MSE(pred, target) + w * sum_k L1(rgb_k, down(HR)) + w * sum_i L1(lat_i, down(z0))

with w = 0.05 per term, ``down`` bilinear without antialiasing (PyTorch's ``F.interpolate(bilinear,
align_corners=False)``), HR in [-1, 1] and z0 the scaled HR latent.

The frozen encoders' outputs may come with the batch (``make-data --cache-latents``): ``cfg.latents =
"precomputed"`` takes the HR posterior's moments from it and still draws z0 from them with the key the VAE path
uses, so both paths see the same noise; ``cfg.text = "precomputed"`` takes the prompt embeddings from it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from xpsr_jax.diffusion.schedule import add_noise, velocity
from xpsr_jax.models.vae import DiagonalGaussian

NUM_TRAIN_TIMESTEPS = 1000


class LossTerms(NamedTuple):
    total: jax.Array
    mse: jax.Array
    dfc_rgb: jax.Array  # weighted sum of the pixel-space terms
    dfc_latent: jax.Array  # weighted sum of the latent-space terms


def downsize(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """NHWC bilinear resize without antialiasing (exact x2/x4/x8 shrinks average the two centre taps)."""
    if x.shape[1:3] == tuple(hw):
        return x
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), "linear", antialias=False)


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


def xpsr_loss(nets, params: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array, cfg) -> LossTerms:
    """``nets``: :class:`xpsr_jax.train.models.Networks`; ``cfg``: the run config's ``loss`` section.

    batch: ``hr`` (B,H,W,3) in [-1,1], ``lr`` (B,H,W,3) in [0,1]; ``ids_high``/``ids_low`` (B,77) int32, or with
    ``cfg.text == "precomputed"`` ``emb_high``/``emb_low`` (B,77,width); with ``cfg.latents == "precomputed"``
    ``latent_moments`` (B,H/8,W/8,2C), the HR posterior's mean and log-variance. The precomputed paths touch
    neither ``params["vae"]`` nor ``params["text_encoder"]``.
    """
    r_vae, r_noise, r_t = jax.random.split(rng, 3)
    hr = batch["hr"]
    scale = nets.vae_config.scaling_factor
    if cfg.latents == "precomputed":
        posterior = DiagonalGaussian.from_moments(batch["latent_moments"].astype(jnp.float32))
    else:
        posterior = nets.vae.apply({"params": params["vae"]}, hr, method="encode")
    z0 = jax.lax.stop_gradient(posterior.sample(r_vae).astype(jnp.float32) * scale)
    if cfg.get("text", "encoder") == "precomputed":
        compute = nets.text.dtype or jnp.float32
        e_high, e_low = (batch[k].astype(compute) for k in ("emb_high", "emb_low"))
    else:
        text = lambda ids: nets.text.apply({"params": params["text_encoder"]}, ids)  # noqa: E731
        e_high = jax.lax.stop_gradient(text(batch["ids_high"]))
        e_low = jax.lax.stop_gradient(text(batch["ids_low"]))

    noise = jax.random.normal(r_noise, z0.shape, jnp.float32)
    t = jax.random.randint(r_t, (z0.shape[0],), 0, NUM_TRAIN_TIMESTEPS)
    z_t = add_noise(z0, noise, t)
    pred, ctrl = nets.xpsr.denoise(params, z_t, t, e_high, e_low, batch["lr"])
    target = velocity(z0, noise, t) if cfg.prediction_type == "v_prediction" else noise
    mse = jnp.mean(jnp.square(pred.astype(jnp.float32) - target))

    w = cfg.dfc_weight
    dfc_rgb = sum((l1(m, downsize(hr, m.shape[1:3])) for m in ctrl.rgb_dfc), jnp.float32(0))
    dfc_lat = sum((l1(m, downsize(z0, m.shape[1:3])) for m in ctrl.latent_dfc), jnp.float32(0))
    return LossTerms(mse + w * (dfc_rgb + dfc_lat), mse, w * dfc_rgb, w * dfc_lat)

"""DDIM sampling with SD1.5's scheduler config (leading spacing, steps_offset 1, set_alpha_to_one False).

One step from t to prev_t = t - 1000 // num_steps; past the end of the chain alpha_bar is alpha_bar(0) (not 1), as
SD1.5 configures set_alpha_to_one False:

    sigma_t = eta * sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
    x_prev  = sqrt(ab_prev) * x0_hat + sqrt(1 - ab_prev - sigma_t^2) * eps_hat + sigma_t * noise

eta = 0 is the deterministic DDIM sampler (``noise`` is ignored and may be None); eta = 1 has DDPM's variance.
"""

from __future__ import annotations

import functools

import numpy as np
import jax
import jax.numpy as jnp

from xpsr_jax.diffusion import schedule


def set_timesteps(num_steps: int) -> np.ndarray:
    """(num_steps,) int32, descending; 20 -> [951, 901, ..., 51, 1] (the same grid as DDPM)."""
    return schedule.leading_timesteps(num_steps)


@functools.lru_cache(maxsize=None)
def coefficients(num_steps: int, eta: float) -> np.ndarray:
    """(1000, 3) float32 per timestep t: the weights of x0_hat, eps_hat and noise."""
    schedule.check_num_steps(num_steps)
    t = np.arange(schedule.NUM_TRAIN_TIMESTEPS)
    prev_t = t - schedule.NUM_TRAIN_TIMESTEPS // num_steps
    # float32 throughout, in the reference's order (see ``schedule.gather``).
    ab = schedule.ALPHAS_CUMPROD
    ab_prev = np.where(prev_t >= 0, ab[np.maximum(prev_t, 0)], ab[0])
    variance = ((1 - ab_prev) / (1 - ab)) * (1 - ab / ab_prev)
    std = np.float32(eta) * np.sqrt(variance)
    return schedule.frozen(np.stack([np.sqrt(ab_prev), np.sqrt(1 - ab_prev - std**2), std], axis=1))


def step(
    model_output: jax.Array,
    t: jax.Array,
    sample: jax.Array,
    noise: jax.Array | None = None,
    *,
    num_steps: int,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
) -> jax.Array:
    """One DDIM step x_t -> x_prev.

    model_output, sample, noise: (B, ...); t: int32 scalar from ``set_timesteps(num_steps)``; ``eta`` is a static
    Python float (it decides whether noise is read at all). Returns (B, ...) in ``sample``'s dtype.
    """
    x0_coef, eps_coef, std = schedule.gather(coefficients(num_steps, float(eta)), t)
    signal, sigma = schedule.gather(schedule.SIGNAL, t), schedule.gather(schedule.SIGMA, t)
    x = sample.astype(jnp.float32)
    x0, eps = schedule.to_x0_and_eps(model_output.astype(jnp.float32), x, signal, sigma, prediction_type)
    x_prev = x0_coef * x0 + eps_coef * eps
    if eta > 0:
        if noise is None:
            raise ValueError("DDIM with eta > 0 needs noise")
        x_prev = x_prev + std * noise.astype(jnp.float32)
    return x_prev.astype(sample.dtype)

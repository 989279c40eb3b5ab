"""DDPM ancestral sampling with SD1.5's scheduler config: the sampler XPSR uses at test time.

Config: "leading" spacing with steps_offset 1 (20 steps -> t = 951, 901, ..., 1), variance_type "fixed_small"
(the posterior variance beta_tilde), clip_sample off, epsilon or v prediction. One step from t to prev_t = t - 1000 //
num_steps, where prev_t < 0 means alpha_bar(prev_t) = 1:

    x0_hat = the model output read as x0 (``schedule.to_x0_and_eps``)
    mean   = sqrt(ab_prev) * beta_t / (1 - ab_t) * x0_hat + sqrt(alpha_t) * (1 - ab_prev) / (1 - ab_t) * x_t
    x_prev = mean + sqrt(max(beta_tilde, 1e-20)) * noise,   beta_tilde = (1 - ab_prev) / (1 - ab_t) * beta_t
    with alpha_t = ab_t / ab_prev and beta_t = 1 - alpha_t (the effective beta of the strided chain).

The caller draws ``noise`` (same shape as the sample), which keeps ``step`` a pure function.
"""

from __future__ import annotations

import functools

import numpy as np
import jax
import jax.numpy as jnp

from xpsr_jax.diffusion import schedule


def set_timesteps(num_steps: int) -> np.ndarray:
    """(num_steps,) int32, descending; 20 -> [951, 901, ..., 51, 1]."""
    return schedule.leading_timesteps(num_steps)


@functools.lru_cache(maxsize=None)
def coefficients(num_steps: int) -> np.ndarray:
    """(1000, 3) float32 per timestep t: the weights of x0_hat and x_t in the mean, and the noise std."""
    schedule.check_num_steps(num_steps)
    t = np.arange(schedule.NUM_TRAIN_TIMESTEPS)
    prev_t = t - schedule.NUM_TRAIN_TIMESTEPS // num_steps
    # float32 throughout, in the reference's order (see ``schedule.gather``).
    ab = schedule.ALPHAS_CUMPROD
    ab_prev = np.where(prev_t >= 0, ab[np.maximum(prev_t, 0)], np.float32(1))
    alpha_t = ab / ab_prev
    beta_t = 1 - alpha_t
    x0_coef = np.sqrt(ab_prev) * beta_t / (1 - ab)
    x_coef = np.sqrt(alpha_t) * (1 - ab_prev) / (1 - ab)
    # The reference clamps the variance so the last step (ab_prev = 1) gets a tiny, not a zero, std, and adds no
    # noise at all at t = 0.
    variance = np.maximum((1 - ab_prev) / (1 - ab) * beta_t, np.float32(1e-20))
    std = np.where(t > 0, np.sqrt(variance), np.float32(0))
    return schedule.frozen(np.stack([x0_coef, x_coef, std], axis=1))


def step(
    model_output: jax.Array,
    t: jax.Array,
    sample: jax.Array,
    noise: jax.Array,
    *,
    num_steps: int,
    prediction_type: str = "epsilon",
) -> jax.Array:
    """One DDPM step x_t -> x_prev.

    model_output, sample, noise: (B, ...); t: int32 scalar, an entry of ``set_timesteps(num_steps)``.
    Returns x_prev with shape (B, ...) in ``sample``'s dtype; the arithmetic is float32.
    """
    x0_coef, x_coef, std = schedule.gather(coefficients(num_steps), t)
    signal, sigma = schedule.gather(schedule.SIGNAL, t), schedule.gather(schedule.SIGMA, t)
    x = sample.astype(jnp.float32)
    x0, _ = schedule.to_x0_and_eps(model_output.astype(jnp.float32), x, signal, sigma, prediction_type)
    mean = x0_coef * x0 + x_coef * x
    return (mean + std * noise.astype(jnp.float32)).astype(sample.dtype)

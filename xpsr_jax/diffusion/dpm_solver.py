"""DPM-Solver++ 2M: the second-order multistep solver in data (x0) prediction.

Config, as diffusers builds it from SD1.5's scheduler config: algorithm "dpmsolver++", solver_order 2, midpoint
solver, lower_order_final True, final sigma 0, and "linspace" spacing over num_steps + 1 points with the last point
dropped (20 steps -> t = 999, 949, ..., 100, 50; SD1.5's steps_offset only applies to "leading" spacing).

With sigma(t) = sqrt((1 - ab_t) / ab_t), alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t and
lambda = log(alpha_t) - log(sigma_t), a step from s0 to t with h = lambda_t - lambda_s0 is

    first order:  x_t = (sigma_t / sigma_s0) * x - alpha_t * (exp(-h) - 1) * D0
    second order: x_t = first order - 0.5 * alpha_t * (exp(-h) - 1) * D1,   D1 = (m0 - m1) / r0, r0 = h_prev / h

where m0 = D0 is this step's x0 prediction and m1 the previous step's. The first step (no history) and the last
step (to sigma 0) are first order. The history lives in ``DPMState`` so a loop over the timesteps is pure and can
be a ``jax.lax.scan``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import jax
import jax.numpy as jnp

from xpsr_jax.diffusion import schedule


class DPMState(NamedTuple):
    """The multistep history: the previous x0 prediction (B, ...) float32, and whether there is one (bool scalar)."""

    last_x0: jax.Array
    has_history: jax.Array


def set_timesteps(num_steps: int) -> np.ndarray:
    """(num_steps,) int32, descending; 20 -> [999, 949, ..., 100, 50]."""
    schedule.check_num_steps(num_steps)
    grid = np.linspace(0, schedule.NUM_TRAIN_TIMESTEPS - 1, num_steps + 1).round()
    return grid[::-1][:-1].astype(np.int32)


@functools.lru_cache(maxsize=None)
def _coefficients(timesteps: tuple[int, ...]) -> np.ndarray:
    # float32 throughout, in the reference's order (see ``schedule.gather``).
    ab = schedule.ALPHAS_CUMPROD[list(timesteps)]
    sig = np.append(np.sqrt((1 - ab) / ab), np.float32(0))  # the chain ends at sigma 0
    alpha = 1 / np.sqrt(sig**2 + 1)
    sigma = sig * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)  # +inf at sigma 0: exp(-h) = 0 and the last step returns x0_hat
    h = lam[1:] - lam[:-1]  # step i goes from s0 = timesteps[i] to t = timesteps[i + 1]
    decay = alpha[1:] * (np.exp(-h) - 1)
    # Second-order terms, zero on the first step (no previous grid point) and the last one (lower_order_final).
    half_decay = np.zeros_like(h)
    inv_r0 = np.zeros_like(h)
    half_decay[1:-1] = 0.5 * decay[1:-1]
    inv_r0[1:-1] = 1 / (h[:-2] / h[1:-1])
    ratio = sigma[1:] / sigma[:-1]
    return schedule.frozen(np.stack([alpha[:-1], sigma[:-1], ratio, decay, half_decay, inv_r0], axis=1))


def coefficients(timesteps: np.ndarray) -> np.ndarray:
    """(num_steps, 6) float32 per step i: alpha_s0 and sigma_s0 (to read the model output), then c0..c3 in

    x_next = c0 * x - c1 * m0 - c2 * (c3 * (m0 - m1)).
    """
    return _coefficients(tuple(int(t) for t in timesteps))


def init_state(sample: jax.Array) -> DPMState:
    """An empty history for a sample of shape (B, ...)."""
    return DPMState(jnp.zeros(sample.shape, jnp.float32), jnp.zeros((), jnp.bool_))


def step(
    state: DPMState,
    model_output: jax.Array,
    t: jax.Array,
    sample: jax.Array,
    *,
    timesteps: np.ndarray,
    prediction_type: str = "epsilon",
) -> tuple[jax.Array, DPMState]:
    """One DPM-Solver++ 2M step x_t -> x_next.

    state: the history from the previous step (``init_state`` at the start); model_output, sample: (B, ...);
    t: int32 scalar, an entry of ``timesteps`` (the static array from ``set_timesteps``), whose position gives the
    step index (a timestep not in the grid counts as the last step, as in the reference). Returns (x_next in
    ``sample``'s dtype, new state).
    """
    t = jnp.asarray(t, jnp.int32)
    match = jnp.asarray(timesteps) == t
    i = jnp.where(match.any(), jnp.argmax(match), len(timesteps) - 1)
    alpha_s0, sigma_s0, ratio, decay, half_decay, inv_r0 = jnp.asarray(coefficients(timesteps))[i]

    x = sample.astype(jnp.float32)
    m0, _ = schedule.to_x0_and_eps(model_output.astype(jnp.float32), x, alpha_s0, sigma_s0, prediction_type)
    x_next = ratio * x - decay * m0
    # A fresh state has no previous x0: that step is first order wherever the chain starts.
    half_decay = jnp.where(state.has_history, half_decay, 0.0)
    x_next = x_next - half_decay * (inv_r0 * (m0 - state.last_x0))
    return x_next.astype(sample.dtype), DPMState(m0, jnp.ones((), jnp.bool_))

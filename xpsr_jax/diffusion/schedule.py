"""The SD1.5 noise schedule and the forward (noising) process.

Stable Diffusion 1.5 trains on 1000 discrete timesteps with "scaled_linear" betas: the square roots of the betas are
evenly spaced from sqrt(0.00085) to sqrt(0.012). Everything here is a function of the cumulative product
alpha_bar(t) = prod_{s<=t} (1 - beta_s):

    x_t = sqrt(alpha_bar(t)) * x0 + sqrt(1 - alpha_bar(t)) * noise        (``add_noise``)
    v_t = sqrt(alpha_bar(t)) * noise - sqrt(1 - alpha_bar(t)) * x0        (``velocity``, v-prediction target)

Timesteps are integers in [0, 999] carried as int32: in bf16, 999 rounds to 1000 and 951 to 952, which silently
shifts the noise level. Coefficients are always computed in float32, whatever the sample dtype.

All functions are layout-agnostic: ``t`` is a scalar or has shape (B,), and samples have shape (B, ...) in any layout.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
PREDICTION_TYPES = ("epsilon", "v_prediction")


def _make_tables() -> tuple[np.ndarray, np.ndarray]:
    # The betas are spaced in float64 and stored in float32 like the reference's (whose float32 linspace puts a few of
    # them one ulp away; alpha_bar then differs by <= 4e-7 relative). The cumulative product is accumulated in
    # float64 because PyTorch's CPU cumprod accumulates float32 inputs in double: a float32 running product would
    # drift by ~1e-6 relative by the end of the chain.
    betas = (np.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float64) ** 2).astype(np.float32)
    alphas = np.float32(1.0) - betas
    alphas_cumprod = np.cumprod(alphas.astype(np.float64)).astype(np.float32)
    return betas, alphas_cumprod


def frozen(table: np.ndarray) -> np.ndarray:
    """A read-only float32 copy, for the module-level and cached coefficient tables."""
    table = np.array(table, np.float32)
    table.setflags(write=False)
    return table


_betas, _alphas_cumprod = _make_tables()
#: (1000,) float32, read-only: betas and alpha_bar.
BETAS, ALPHAS_CUMPROD = frozen(_betas), frozen(_alphas_cumprod)
#: (1000,) float32, read-only: sqrt(alpha_bar) and sqrt(1 - alpha_bar), the signal and noise weights of x_t.
SIGNAL = frozen(np.sqrt(ALPHAS_CUMPROD))
SIGMA = frozen(np.sqrt(1 - ALPHAS_CUMPROD))


def gather(table: np.ndarray, t: jax.Array) -> jax.Array:
    """``table[t]`` for integer timesteps ``t`` (any shape); ``table`` has a leading axis of 1000 timesteps.

    This is how coefficients reach the device. The samplers evaluate every scalar formula (sqrt, exp, log) on the
    host, in float32 and in the reference's order, so their coefficients carry the reference's rounding; on the
    device a step is only multiplies and adds. Computing the scalars inside jit instead drifts by several ulp: XLA
    rewrites x / sqrt(y) as x * rsqrt(y) and uses its own exp/log approximations inside fusions.
    """
    return jnp.asarray(table)[jnp.asarray(t, jnp.int32)]


def leading_timesteps(num_steps: int, steps_offset: int = 1) -> np.ndarray:
    """"leading" spacing with SD1.5's steps_offset: (num_steps,) int32, descending; 20 steps -> 951, 901, ..., 1."""
    check_num_steps(num_steps)
    step_ratio = NUM_TRAIN_TIMESTEPS // num_steps
    return (np.arange(num_steps - 1, -1, -1) * step_ratio + steps_offset).astype(np.int32)


def check_num_steps(num_steps: int) -> None:
    if not 1 <= num_steps <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"num_steps must be in [1, {NUM_TRAIN_TIMESTEPS}], got {num_steps}")


def _per_sample(coef: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape a scalar or (B,) coefficient so it broadcasts over a (B, ...) sample."""
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def add_noise(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """Noise clean samples to level ``t``: x0, noise (B, ...); t scalar or (B,) -> (B, ...) in x0's dtype."""
    signal, sigma = _per_sample(gather(SIGNAL, t), x0), _per_sample(gather(SIGMA, t), x0)
    return (signal * x0 + sigma * noise).astype(x0.dtype)


def velocity(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """The v-prediction training target: x0, noise (B, ...); t scalar or (B,) -> (B, ...) in x0's dtype."""
    signal, sigma = _per_sample(gather(SIGNAL, t), x0), _per_sample(gather(SIGMA, t), x0)
    return (signal * noise - sigma * x0).astype(x0.dtype)


def faithful_start_latent(
    z_lr: jax.Array, n1: jax.Array, n2: jax.Array, t1: int = 951, t2: int = 800
) -> jax.Array:
    """XPSR's inference start: the LR latent noised twice, first to ``t1`` then (on top) to ``t2``.

    z = sqrt(ab(t2)) * (sqrt(ab(t1)) * z_lr + sqrt(1 - ab(t1)) * n1) + sqrt(1 - ab(t2)) * n2.
    With the defaults the LR signal keeps a weight of ~0.0173 and the noise has std ~0.99985: the start is almost
    pure noise with a faint trace of the LR image. ``t2`` is the pipeline's ``added_noise_level`` (400 in
    training-time validation). Shapes: all (B, ...) -> (B, ...).
    """
    return add_noise(add_noise(z_lr, n1, t1), n2, t2)


def to_x0_and_eps(
    model_output: jax.Array, sample: jax.Array, signal: jax.Array, sigma: jax.Array, prediction_type: str
) -> tuple[jax.Array, jax.Array]:
    """Read the model's output as (predicted x0, predicted noise), given x_t = signal * x0 + sigma * noise.

    model_output, sample: (B, ...) float32; signal, sigma: float32 scalars -> two (B, ...) float32 arrays.
    """
    if prediction_type == "epsilon":
        x0 = (sample - sigma * model_output) / signal
        eps = model_output
    elif prediction_type == "v_prediction":
        x0 = signal * sample - sigma * model_output
        eps = signal * model_output + sigma * sample
    else:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return x0, eps

"""One interface over the samplers, picked by name from a config string.

    sampler = make_sampler("ddpm", num_steps=20)
    state = sampler.init_state(z)
    for t in sampler.timesteps:
        noise = jax.random.normal(key_t, z.shape) if sampler.uses_noise else None
        z, state = sampler.step(state, model_output(z, t), t, z, noise)

``step`` is pure (no Python-side state), so it can be jitted or used as the body of a ``jax.lax.scan`` over
``timesteps`` with ``(z, state)`` as the carry. Stateless samplers carry an empty tuple.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np
import jax

from xpsr_jax.diffusion import ddim, ddpm, dpm_solver, schedule

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")

#: step(state, model_output, t, sample, noise) -> (prev_sample, new_state)
StepFn = Callable[[Any, jax.Array, jax.Array, jax.Array, "jax.Array | None"], "tuple[jax.Array, Any]"]


@dataclasses.dataclass(frozen=True, eq=False)
class Sampler:
    """A configured sampler.

    name: the config string; timesteps: (num_steps,) int32, descending, the model is called once per entry;
    uses_noise: whether ``step`` reads its ``noise`` argument (same shape as the sample), so the caller can skip
    drawing it; init_state: sample (B, ...) -> the state pytree for the first step; step: see ``StepFn``.
    """

    name: str
    timesteps: np.ndarray
    uses_noise: bool
    init_state: Callable[[jax.Array], Any]
    step: StepFn


def _no_state(sample: jax.Array) -> tuple:
    return ()


def _stateless(step_fn: Callable[..., jax.Array]) -> StepFn:
    def step(state, model_output, t, sample, noise):
        return step_fn(model_output, t, sample, noise), state

    return step


def _dpm_step(state, model_output, t, sample, noise, *, timesteps, prediction_type):
    del noise  # deterministic solver
    return dpm_solver.step(state, model_output, t, sample, timesteps=timesteps, prediction_type=prediction_type)


def make_sampler(name: str, num_steps: int, prediction_type: str = "epsilon", eta: float = 0.0) -> Sampler:
    """Build a sampler by name: "ddpm" (XPSR's test-time default), "ddim" (``eta`` applies) or "dpmsolver++"."""
    if prediction_type not in schedule.PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {schedule.PREDICTION_TYPES}, got {prediction_type!r}")
    if name == "ddpm":
        step = functools.partial(ddpm.step, num_steps=num_steps, prediction_type=prediction_type)
        return Sampler(name, ddpm.set_timesteps(num_steps), True, _no_state, _stateless(step))
    if name == "ddim":
        step = functools.partial(ddim.step, num_steps=num_steps, prediction_type=prediction_type, eta=eta)
        return Sampler(name, ddim.set_timesteps(num_steps), eta > 0, _no_state, _stateless(step))
    if name == "dpmsolver++":
        timesteps = dpm_solver.set_timesteps(num_steps)
        step = functools.partial(_dpm_step, timesteps=timesteps, prediction_type=prediction_type)
        return Sampler(name, timesteps, False, dpm_solver.init_state, step)
    raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")

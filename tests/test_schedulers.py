"""The schedule and samplers against diffusers' PyTorch schedulers built from SD1.5's scheduler config.

Tolerance: both sides compute in float32 with the same operations in the same order, on latents of the scale SD
works at (|x| mostly < 4, where one float32 ulp is 4.8e-7, and always < 8, where it is 9.5e-7). Steps agree to
within one ulp eagerly and about 1.5 ulp under jit, where XLA fuses multiply-adds into FMAs (worst seen: 7.2e-7 over
six seeds). 1e-6 absolute is therefore the tightest round bound that float32 allows, while a wrong coefficient,
timestep or operation moves a step by 1e-4 or more.

The step tests give diffusers our float32 betas (``trained_betas``) so both sides share the table bit for bit and
the tests isolate the sampler arithmetic; the table itself is compared with diffusers' own scaled-linear table in
``test_alphas_cumprod_matches_diffusers``. Model outputs are the exact target for a hidden clean latent plus random
error, which keeps trajectories at latent scale as real sampling does (pure N(0, 1) "model outputs" make epsilon
trajectories explode to |x| ~ 50, where float32 rounding alone exceeds 1e-6).
"""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

import jax
import jax.numpy as jnp

from xpsr_jax.diffusion import ddpm, dpm_solver, make_sampler, schedule

# Raised inside diffusers' DPM-Solver (np.array on a tensor under NumPy 2), not by the code under test.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# scheduler/scheduler_config.json of the SD1.5 diffusers folder.
SD15_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    skip_prk_steps=True,
)
REFERENCE = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}
SHAPE = (2, 4, 8, 8)  # (B, C, H, W) latents
ATOL = 1e-6


def reference(name, num_steps, prediction_type="epsilon", shared_table=True):
    config = dict(SD15_CONFIG, prediction_type=prediction_type)
    if shared_table:
        config["trained_betas"] = schedule.BETAS.copy()
    sched = REFERENCE[name].from_config(config)
    sched.set_timesteps(num_steps)
    return sched


def reference_step(sched, name, model_output, t, sample, seed, eta):
    """One diffusers step; the noise it draws is reproduced from the same seed and returned alongside."""
    out = torch.from_numpy(model_output)
    x = torch.from_numpy(sample)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    if name == "ddpm":
        prev = sched.step(out, int(t), x, generator=torch.Generator().manual_seed(seed)).prev_sample
    elif name == "ddim":
        prev = sched.step(out, int(t), x, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
    else:
        prev = sched.step(out, int(t), x).prev_sample
    return prev.numpy(), noise.numpy()


def model_output(rng, sample, t, clean, prediction_type):
    """A stand-in denoiser: the exact epsilon or v target for ``clean`` at ``t``, plus N(0, 0.1^2) error."""
    ab = np.float64(schedule.ALPHAS_CUMPROD[t])
    eps = (sample - np.sqrt(ab) * clean) / np.sqrt(1 - ab)
    target = eps if prediction_type == "epsilon" else np.sqrt(ab) * eps - np.sqrt(1 - ab) * clean
    return (target + 0.1 * rng.standard_normal(SHAPE)).astype(np.float32)


def run_trajectory(name, num_steps, prediction_type, eta=0.0, jit=False, seed=0, shared_table=True):
    """Step both samplers over the whole schedule, feeding each step the same inputs; returns the worst |diff|."""
    rng = np.random.default_rng(seed)
    sched = reference(name, num_steps, prediction_type, shared_table)
    sampler = make_sampler(name, num_steps, prediction_type, eta=eta)
    step = jax.jit(sampler.step) if jit else sampler.step
    clean = rng.standard_normal(SHAPE).astype(np.float32)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    state = sampler.init_state(jnp.asarray(x))
    worst = largest = 0.0
    for i, t in enumerate(sampler.timesteps):
        out = model_output(rng, x, t, clean, prediction_type)
        expected, noise = reference_step(sched, name, out, t, x, seed=1000 * seed + i, eta=eta)
        got, state = step(state, jnp.asarray(out), jnp.int32(t), jnp.asarray(x), jnp.asarray(noise))
        worst = max(worst, float(np.abs(np.asarray(got) - expected).max()))
        x = expected  # the same sample for both sides at the next step
        largest = max(largest, float(np.abs(x).max()))
    assert largest < 8, f"|x| reached {largest}: from 8 up one float32 ulp exceeds 1e-6 and the tolerance is moot"
    return worst


@pytest.mark.parametrize(
    "name, prediction_type, eta, num_steps",
    [
        ("ddpm", "epsilon", 0.0, 20),
        ("ddpm", "v_prediction", 0.0, 20),
        ("ddim", "epsilon", 0.0, 20),
        ("ddim", "v_prediction", 0.0, 20),
        ("ddim", "epsilon", 1.0, 20),
        ("dpmsolver++", "epsilon", 0.0, 20),
        ("dpmsolver++", "v_prediction", 0.0, 20),
        ("dpmsolver++", "epsilon", 0.0, 5),  # under 15 steps diffusers has extra lower-order rules
    ],
)
def test_steps_match_diffusers(name, prediction_type, eta, num_steps):
    assert run_trajectory(name, num_steps, prediction_type, eta) <= ATOL


@pytest.mark.parametrize("name", ["ddpm", "dpmsolver++"])
def test_step_under_jit_matches_diffusers(name):
    assert run_trajectory(name, 20, "epsilon", jit=True, seed=1) <= ATOL


def test_ddpm_matches_diffusers_own_table():
    """End to end against the scheduler the official code runs, table included.

    Its betas come from a float32 linspace that rounds some of them one ulp off ours, so alpha_bar differs by up to
    4e-7 relative and the step coefficients by about as much; that adds up to about one more ulp per step.
    """
    assert run_trajectory("ddpm", 20, "epsilon", shared_table=False) <= 2 * ATOL


def test_dpm_solver_runs_as_scan():
    """The multistep history is a pytree: a jitted lax.scan over the timesteps equals the eager Python loop."""
    sampler = make_sampler("dpmsolver++", 20)
    rng = np.random.default_rng(5)
    outs = jnp.asarray(rng.standard_normal((20,) + SHAPE, np.float32))
    x0 = jnp.asarray(rng.standard_normal(SHAPE, np.float32))

    def body(carry, inputs):
        x, state = carry
        out, t = inputs
        x, state = sampler.step(state, out, t, x, None)
        return (x, state), x

    scan = jax.jit(lambda x: jax.lax.scan(body, (x, sampler.init_state(x)), (outs, sampler.timesteps))[1])
    scanned = np.asarray(scan(x0))
    x, state = x0, sampler.init_state(x0)
    for i, t in enumerate(sampler.timesteps):
        x, state = sampler.step(state, outs[i], jnp.int32(t), x, None)
        # N(0, 1) "model outputs" drive this trajectory to |x| ~ 10; compiled and eager code differ in the last bits
        # (FMA contraction), so the bound is a few ulp at that scale.
        np.testing.assert_allclose(scanned[i], x, rtol=0, atol=8 * np.spacing(np.float32(np.abs(x).max())))


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmsolver++"])
@pytest.mark.parametrize("num_steps", [1, 7, 20, 50, 1000])
def test_timesteps_equal_diffusers(name, num_steps):
    sampler = make_sampler(name, num_steps)
    expected = reference(name, num_steps, shared_table=False).timesteps.numpy()
    assert sampler.timesteps.dtype == np.int32
    np.testing.assert_array_equal(sampler.timesteps, expected)


def test_sd15_timestep_grids():
    np.testing.assert_array_equal(ddpm.set_timesteps(20), np.arange(951, 0, -50))
    assert dpm_solver.set_timesteps(20)[[0, 1, -1]].tolist() == [999, 949, 50]


def test_alphas_cumprod_matches_diffusers():
    sched = reference("ddpm", 20, shared_table=False)
    # PyTorch spaces the betas with a float32 linspace, which rounds some of them one ulp away from the float64
    # spacing used here; the cumulative product then differs by at most ~4e-7 relative.
    np.testing.assert_allclose(schedule.BETAS, sched.betas.numpy(), rtol=3e-7, atol=0)
    np.testing.assert_allclose(schedule.ALPHAS_CUMPROD, sched.alphas_cumprod.numpy(), rtol=5e-7, atol=0)
    # Given the same betas, the products agree to the last bit: both accumulate in float64.
    np.testing.assert_array_equal(schedule.ALPHAS_CUMPROD, reference("ddpm", 20).alphas_cumprod.numpy())


@pytest.mark.parametrize("t", [np.int32(951), np.array([0, 1, 500, 999], np.int32)])
def test_add_noise_and_velocity_match_diffusers(t):
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((4, 4, 8, 8)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    sched = reference("ddpm", 20, shared_table=False)  # the real SD1.5 table: this is what training sees
    t_torch = torch.as_tensor(np.atleast_1d(t).astype(np.int64))
    args = (torch.from_numpy(x0), torch.from_numpy(noise), t_torch)
    got_noisy = schedule.add_noise(jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
    got_v = schedule.velocity(jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
    np.testing.assert_allclose(got_noisy, sched.add_noise(*args).numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(got_v, sched.get_velocity(*args).numpy(), rtol=0, atol=ATOL)


def test_add_noise_keeps_dtype_and_computes_coefficients_in_float32():
    x0 = jnp.ones((1, 4, 2, 2), jnp.bfloat16)
    noisy = schedule.add_noise(x0, jnp.zeros_like(x0), jnp.int32(999))
    assert noisy.dtype == jnp.bfloat16
    expected = np.sqrt(np.float32(schedule.ALPHAS_CUMPROD[999]))
    np.testing.assert_allclose(np.asarray(noisy, np.float32), expected, rtol=2**-8)


def test_faithful_start_latent():
    rng = np.random.default_rng(4)
    z_lr, n1, n2 = (rng.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(3))
    ab = schedule.ALPHAS_CUMPROD.astype(np.float64)
    expected = np.sqrt(ab[800]) * (np.sqrt(ab[951]) * z_lr + np.sqrt(1 - ab[951]) * n1) + np.sqrt(1 - ab[800]) * n2
    got = schedule.faithful_start_latent(jnp.asarray(z_lr), jnp.asarray(n1), jnp.asarray(n2))
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)

    # With n1 = n2 = 0 what is left is the LR signal's weight: sqrt(ab(800) * ab(951)) ~ 0.0173.
    signal = schedule.faithful_start_latent(jnp.ones((1,)), jnp.zeros((1,)), jnp.zeros((1,)))
    np.testing.assert_allclose(signal, np.sqrt(ab[800] * ab[951]), rtol=1e-6)
    assert abs(float(signal[0]) - 0.0173) < 5e-5
    noise_std = np.sqrt(ab[800] * (1 - ab[951]) + (1 - ab[800]))
    assert abs(noise_std - 0.99985) < 5e-5

    # The same as diffusers' add_noise applied twice.
    sched = reference("ddpm", 20, shared_table=False)
    z = sched.add_noise(torch.from_numpy(z_lr), torch.from_numpy(n1), torch.tensor([951]))
    z = sched.add_noise(z, torch.from_numpy(n2), torch.tensor([800]))
    np.testing.assert_allclose(got, z.numpy(), rtol=0, atol=ATOL)


def test_make_sampler_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("euler", 20)
    with pytest.raises(ValueError, match="prediction_type"):
        make_sampler("ddpm", 20, prediction_type="flow")

"""The SD1.5 noise schedule and the samplers (DDPM, DDIM, DPM-Solver++ 2M), pure JAX and jit-friendly."""

from xpsr_jax.diffusion.sampler import SAMPLERS, Sampler, make_sampler
from xpsr_jax.diffusion.schedule import add_noise, faithful_start_latent, velocity

__all__ = ["SAMPLERS", "Sampler", "make_sampler", "add_noise", "faithful_start_latent", "velocity"]

"""xpsr_jax: XPSR (cross-modal priors for diffusion-based image super-resolution) in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import xpsr_jax` (and the CLI's --help) stays fast and does not start JAX.
    if name == "XPSRDenoiser":
        from xpsr_jax.infer.denoiser import XPSRDenoiser

        return XPSRDenoiser
    raise AttributeError(name)

"""XPSR super-resolution inference: the official test-time chain (§5 of the reference) in JAX, with tiling.

Python API (names load lazily, so ``xpsr-jax --help`` never starts JAX)::

    from xpsr_jax.infer import SRPipeline, SRSettings, Prompt
    pipe = SRPipeline.from_pretrained("weights/xpsr", SRSettings(upscale=4))
    [res] = pipe.super_resolve([lr_uint8], [Prompt("caption", "quality description")])

One denoiser call (ControlNet + UNet) on NumPy arrays in PyTorch layout: ``XPSRDenoiser`` (also
``from xpsr_jax import XPSRDenoiser``).

Modules: settings (defaults), preprocess (sizes, PIL resizes), prompts, noise (keys), denoise (the jitted loop),
tiling + tile_plan + vae_tiles (large images), colorfix, pipeline, inputs + runner + cli (``xpsr-jax sr``),
denoiser (one call, NumPy in and out), tiny.
"""

_EXPORTS = {
    "SRPipeline": "xpsr_jax.infer.pipeline",
    "SRResult": "xpsr_jax.infer.pipeline",
    "SRSettings": "xpsr_jax.infer.settings",
    "Prompt": "xpsr_jax.infer.prompts",
    "SRRunner": "xpsr_jax.infer.runner",
    "XPSRDenoiser": "xpsr_jax.infer.denoiser",
    "make_tiny_checkpoint": "xpsr_jax.infer.tiny",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)

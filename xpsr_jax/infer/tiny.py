"""A tiny random XPSR checkpoint (UNet, ControlNet, VAE, CLIP text encoder), built in code for tests and the demo.

Shapes: the preset of :mod:`xpsr_jax.testing` (UNet/ControlNet, VAE and CLIP text encoder), the same model the
tiny training config trains. No tokenizer folder is written: the pipeline then uses the bundled vocabulary.

The parameters are drawn in NumPy from the abstract shapes (``jax.eval_shape``), not by running the models'
initialisers, which XLA:CPU takes tens of seconds to compile. Every tensor is random, zero convolutions and the
DFC heads included, so no branch of the network is silently off: weights and biases ~ U(+-1/sqrt(fan_in)) like
PyTorch's default, norm scales ~ 1 + N(0, 0.1^2), embeddings ~ N(0, 0.02^2) (CLIP's).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from xpsr_jax import testing
from xpsr_jax.models.clip_text import init_shapes
from xpsr_jax.models.vae import abstract_params as vae_abstract_params
from xpsr_jax.models.xpsr import XPSR
from xpsr_jax.weights import checkpoint

TINY_VAE = testing.vae_config()
TINY_TEXT = testing.text_config()


def _random_like(tree, rng: np.random.Generator):
    def leaf(path, spec):
        name = str(getattr(path[-1], "key", path[-1]))
        shape = tuple(spec.shape)
        if name == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name == "embedding":
            value = 0.02 * rng.standard_normal(shape)
        else:
            # kernels are (..., in, out): fan_in is everything but the last axis; a bias takes its layer's bound,
            # approximated by its own width
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else shape[0]
            bound = 1.0 / np.sqrt(max(fan_in, 1))
            value = rng.uniform(-bound, bound, shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, tree)


def tiny_params(seed: int = 0) -> tuple[dict, dict]:
    """-> (params, meta) of a tiny random XPSR with VAE and text encoder, NumPy float32."""
    cfg = testing.unet_config()
    # one generator per component, so that one component's shapes do not change the others' weights
    params = dict(_random_like(XPSR(cfg).abstract_params(), np.random.default_rng([seed, 0])))
    params["vae"] = _random_like(vae_abstract_params(TINY_VAE), np.random.default_rng([seed, 1]))
    params["text_encoder"] = _random_like(init_shapes(TINY_TEXT), np.random.default_rng([seed, 2]))
    meta = {"unet_config": dataclasses.asdict(cfg), "vae_config": dataclasses.asdict(TINY_VAE),
            "text_encoder_config": dataclasses.asdict(TINY_TEXT),
            "source": {"kind": "tiny-random", "seed": seed}}
    return params, meta


def make_tiny_checkpoint(out: str | Path, seed: int = 0, overwrite: bool = True) -> Path:
    """Write a tiny random checkpoint folder that ``SRPipeline.from_pretrained`` and ``xpsr-jax sr`` load."""
    params, meta = tiny_params(seed)
    return checkpoint.save(out, params, meta, overwrite=overwrite)

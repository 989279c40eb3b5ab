"""A tiny XPSR for tests, the demo and CPU smoke runs: the shapes of :mod:`xpsr_jax.testing`, 64 px crops,
random init, fp32."""

import ml_collections

from xpsr_jax import testing
from xpsr_jax.configs import xpsr_sd15


def get_config() -> ml_collections.ConfigDict:
    c = xpsr_sd15.get_config()
    c.model.unet = ml_collections.ConfigDict(dict(testing.UNET))
    c.model.vae = ml_collections.ConfigDict(dict(testing.VAE))
    c.model.text_encoder = ml_collections.ConfigDict(dict(testing.TEXT))
    c.model.attention_impl = "xla"
    c.compute_dtype = "float32"
    c.optim.frozen_dtype = "float32"
    c.optim.learning_rate = 1e-4
    c.data.source = "synthetic"
    c.data.resolution = testing.RESOLUTION
    c.global_batch_size = testing.GLOBAL_BATCH
    c.num_train_steps = 4
    c.log_every = 1
    c.checkpoint_every = 2
    c.keep_checkpoints = 2
    return c

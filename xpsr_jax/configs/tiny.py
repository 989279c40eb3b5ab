"""A tiny XPSR for tests and the demo: 4 levels of (32, 64, 64, 64) channels, 128 px images, random init, CPU."""

import ml_collections

from xpsr_jax.configs import xpsr_sd15


def get_config() -> ml_collections.ConfigDict:
    c = xpsr_sd15.get_config()
    c.model.unet = ml_collections.ConfigDict(dict(
        block_out_channels=(32, 64, 64, 64), layers_per_block=2, cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=8, sample_size=16))
    c.model.vae = ml_collections.ConfigDict(dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1,
                                                 norm_num_groups=8))
    c.model.text_encoder = ml_collections.ConfigDict(dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                                          num_attention_heads=4))
    c.model.attention_impl = "xla"
    c.compute_dtype = "float32"
    c.optim.frozen_dtype = "float32"
    c.optim.learning_rate = 1e-4
    c.data.source = "synthetic"
    c.data.resolution = 128
    c.global_batch_size = 8
    c.num_train_steps = 4
    c.log_every = 1
    c.checkpoint_every = 2
    c.keep_checkpoints = 2
    return c

"""The one tiny XPSR: the shapes every test, the demo, the CPU benchmarks and ``--config tiny`` share.

SD1.5's blocks at toy widths: a 2-level UNet/ControlNet of (32, 64) channels (a cross-attention down block, a plain
down block, a plain up block and a cross-attention up block: every block kind once, pixel attentions in both up
blocks) with one layer per block (two in the decoder, as always), 8 heads, 8 norm groups and 32-wide
cross-attention; a 4-level VAE that scales by 8 like SD's; a 2-layer CLIP text encoder of width 32 with SD's
vocabulary, so the bundled tokenizer's ids fit (its MLP width 37 is odd on purpose: a transposed kernel cannot
hide behind a square shape). ``UNET_4_LEVELS`` keeps SD1.5's four levels at the same widths for the UNet's parity
and conversion tests, which compile no train step; two levels halve the train step's compile (measured on 2
cores: 39 s against 66-72 s).

Why one preset: XLA compiles a program once per distinct program, and the test run shares one compilation cache
across its processes (``tests/conftest.py``). The training tests, the multi-process runs and the demo all train
this model at ``RESOLUTION`` px with ``GLOBAL_BATCH`` images on the ``MESH_8`` mesh (``--config tiny`` has these shapes), so the step they compile is the
same program, compiled once. The official fixture (``shared/fixtures/official-tiny``) has two layers per block: the
tests of it read its own config.json.
"""

from __future__ import annotations

from typing import Any

UNET: dict[str, Any] = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                            attention_head_dim=8, norm_num_groups=8, sample_size=16,
                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
# SD1.5's four levels at the same toy widths: the parity tests of the UNet and of the ControlNet's wiring use it
UNET_4_LEVELS: dict[str, Any] = dict(UNET, block_out_channels=(32, 64, 64, 64),
                                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
VAE: dict[str, Any] = dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8)
TEXT: dict[str, Any] = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77)

RESOLUTION = 64  # training crops: 8x8 latents
GLOBAL_BATCH = 8
MESH_8 = (("data", 4), ("fsdp", 2))  # the 8 fake CPU devices of the tests and the demo


def unet_config(**changes):
    """The tiny :class:`~xpsr_jax.models.config.UNetConfig`; ``changes`` switch XPSR options (fusion, ...)."""
    from xpsr_jax.models.config import UNetConfig

    return UNetConfig(**{**UNET, **changes})


def vae_config():
    from xpsr_jax.models.vae_config import VAEConfig

    return VAEConfig(**VAE, sample_size=RESOLUTION)


def text_config():
    from xpsr_jax.models.clip_text import ClipTextConfig

    return ClipTextConfig(**TEXT)

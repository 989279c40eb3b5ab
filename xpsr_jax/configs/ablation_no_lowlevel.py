"""Ablation: without the low-level prompt (a plain ControlNet: no low-level or fusion attention) (a row of the paper's ablation table); everything else as xpsr_jax/configs/xpsr_sd15.py."""

from xpsr_jax.configs import xpsr_sd15


def get_config():
    c = xpsr_sd15.get_config()
    c.model.fusion = "high_only"
    return c

"""Ablation: sequential attention (high-level, then low-level on its output) instead of SFA (a row of the paper's ablation table); everything else as xpsr_jax/configs/xpsr_sd15.py."""

from xpsr_jax.configs import xpsr_sd15


def get_config():
    c = xpsr_sd15.get_config()
    c.model.fusion = "sequential"
    return c

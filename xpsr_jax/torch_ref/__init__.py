"""PyTorch reference definitions of XPSR, built on diffusers' own PyTorch classes.

This package is the test oracle for the JAX/Flax port: it reproduces the official XPSR UNet and ControlNet (same
state-dict keys, same data flow, verified against outputs of the official code) and XPSR's initialisation from
SD1.5, so Flax forwards, initialisers and exported weights can be compared with it tensor by tensor. It is also a
way to run exported weights in PyTorch without the official repository::

    from xpsr_jax.torch_ref import load_official
    unet, controlnet = load_official("runs/xpsr/checkpoint-300000")
    latent_dfc, rgb_dfc, down, mid = controlnet(z_t, t, e_high, e_low, lr_image)
    eps = unet(z_t, t, e_high, down, mid)

All tensors NCHW. Importing this package needs torch and diffusers, never JAX.
"""

from xpsr_jax.torch_ref.checkpoint import (
    StateDictError,
    check_state_dict,
    load_model,
    load_official,
    save_official,
)
from xpsr_jax.torch_ref.config import (
    FUSIONS,
    ConfigError,
    ControlNetSwitches,
    controlnet_config_from_unet,
)
from xpsr_jax.torch_ref.init import (
    controlnet_init_source,
    from_sd15_unet,
    unet_init_source,
)
from xpsr_jax.torch_ref.models import (
    ControlNetOutputs,
    XPSRControlNet,
    XPSRUNet,
    from_configs,
    transformer2d,
)

__all__ = [
    "FUSIONS",
    "ConfigError",
    "ControlNetOutputs",
    "ControlNetSwitches",
    "StateDictError",
    "XPSRControlNet",
    "XPSRUNet",
    "check_state_dict",
    "controlnet_config_from_unet",
    "controlnet_init_source",
    "from_configs",
    "from_sd15_unet",
    "load_model",
    "load_official",
    "save_official",
    "transformer2d",
    "unet_init_source",
]

"""The XPSR denoiser: ControlNet + UNet as one pure function, and their parameters' shapes.

``denoise`` is what training and sampling call; it works in NHWC. The NumPy/PyTorch-layout entry point for users is
:class:`xpsr_jax.XPSRDenoiser` (``xpsr_jax/infer/denoiser.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xpsr_jax.models.config import UNetConfig
from xpsr_jax.models.controlnet import ControlNet, ControlNetOutput
from xpsr_jax.models.unet import UNet
from xpsr_jax.nn.init import fresh_params

# Modules whose parameters start at zero (ControlNet's zero convs), for ``fresh_params``; the same modules pass
# ``zero_init=True`` to their Conv2d for linen's own init.
ZERO_INIT_MODULES = (r"controlnet/controlnet_down_blocks_\d+", r"controlnet/controlnet_mid_block",
                     r"controlnet/controlnet_cond_embedding/conv_out")

Params = dict[str, Any]  # {"unet": ..., "controlnet": ...}


@dataclasses.dataclass(frozen=True)
class XPSR:
    """The two networks of XPSR, built from one config. Hashable, so it can be a static jit argument."""

    config: UNetConfig
    attention_impl: str = "auto"
    dtype: Any = None  # compute dtype (None: that of the inputs); parameters stay in their own dtype
    remat: bool = False  # recompute blocks in the backward pass (training memory)

    @property
    def unet(self) -> UNet:
        return UNet(self.config, self.attention_impl, self.dtype, remat=self.remat)

    @property
    def controlnet(self) -> ControlNet:
        return ControlNet(self.config, self.attention_impl, self.dtype, remat=self.remat)

    def example_inputs(self, batch: int = 1, latent: int = 8):
        cfg = self.config
        f32 = jnp.float32
        return dict(
            sample=jnp.zeros((batch, latent, latent, cfg.in_channels), f32),
            timesteps=jnp.zeros((batch,), f32),
            e_high=jnp.zeros((batch, 77, cfg.cross_attention_dim), f32),
            e_low=jnp.zeros((batch, 77, cfg.cross_attention_dim), f32),
            cond=jnp.zeros((batch, 8 * latent, 8 * latent, cfg.conditioning_channels), f32),
        )

    def init(self, rng: jax.Array, boxed: bool = False) -> Params:
        """Fresh parameters: PyTorch-default init, zero convs zero. ``boxed`` keeps the logical-axis metadata."""
        x = self.example_inputs()
        r_cn, r_un = jax.random.split(rng)
        cn_vars = self.controlnet.init(r_cn, x["sample"], x["timesteps"], x["e_high"], x["e_low"], x["cond"])
        out = self.controlnet.apply(nn.unbox(cn_vars), x["sample"], x["timesteps"], x["e_high"], x["e_low"],
                                    x["cond"])
        un_vars = self.unet.init(r_un, x["sample"], x["timesteps"], x["e_high"], out.down_residuals,
                                 out.mid_residual)
        params = {"unet": un_vars["params"], "controlnet": cn_vars["params"]}
        return params if boxed else nn.unbox(params)

    def abstract_params(self, boxed: bool = False) -> Params:
        """Shapes and dtypes only (``jax.eval_shape``), for SD1.5-size checks and sharded creation."""
        return jax.eval_shape(lambda: self.init(jax.random.key(0), boxed=boxed))

    def fresh_params(self, seed: int) -> Params:
        """PyTorch-default initialisation on the host (NumPy), zero convs zero, without compiling anything."""
        return fresh_params(self.abstract_params(), seed, ZERO_INIT_MODULES)

    def denoise(
        self,
        params: Params,
        sample: jax.Array,
        timesteps: jax.Array,
        e_high: jax.Array,
        e_low: jax.Array | None,
        cond: jax.Array,
        conditioning_scale: float | jax.Array = 1.0,
    ) -> tuple[jax.Array, ControlNetOutput]:
        """One denoiser call. NHWC: sample (B,h,w,4), cond (B,8h,8w,3) in [0,1]; prompts (B,77,D).

        Returns the UNet's prediction (B,h,w,4) and the ControlNet output (residuals and DFC maps).
        """
        ctrl = self.controlnet.apply({"params": params["controlnet"]}, sample, timesteps, e_high, e_low, cond,
                                     conditioning_scale)
        eps = self.unet.apply({"params": params["unet"]}, sample, timesteps, e_high, ctrl.down_residuals,
                              ctrl.mid_residual)
        return eps, ctrl

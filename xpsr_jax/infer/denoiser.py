"""``XPSRDenoiser``: one ControlNet + UNet call on NumPy arrays in PyTorch layout, from a converted checkpoint.

    >>> from xpsr_jax import XPSRDenoiser
    >>> den = XPSRDenoiser.from_pretrained("weights/xpsr-flax")
    >>> eps, dfc = den(latents, timesteps, high, low, lr)   # (B,4,h,w), {"latent_dfc": [13], "rgb_dfc": [3]}
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xpsr_jax.models.xpsr import XPSR, Params
from xpsr_jax.weights import checkpoint


def _nhwc(a) -> jax.Array:
    return jnp.asarray(np.asarray(a, np.float32).transpose(0, 2, 3, 1))


def _nchw(a) -> np.ndarray:
    return np.asarray(a, np.float32).transpose(0, 3, 1, 2)


class XPSRDenoiser:
    """A compiled XPSR denoiser. Inputs (PyTorch layout, NumPy or anything array-like):

    latents (B,4,h,w); timesteps (B,) or a scalar; high and low (B,77,D) CLIP text embeddings of the high- and
    low-level prompts; lr (B,3,8h,8w) in [0,1]; conditioning_scale (float). Returns ``(eps, dfc)``: the noise
    prediction (B,4,h,w) and ``{"latent_dfc": 13 maps (B,4,·,·), "rgb_dfc": 3 maps (B,3,·,·)}`` (NCHW float32).
    """

    def __init__(self, model: XPSR, params: Params):
        self.model = model
        self.params = params
        self._fn = jax.jit(model.denoise)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=None, attention_impl: str = "auto") -> "XPSRDenoiser":
        meta, params = checkpoint.load(path, components=("unet", "controlnet"))
        model = XPSR(checkpoint.unet_config(meta), attention_impl=attention_impl, dtype=dtype)
        return cls(model, params)

    def __call__(self, latents, timesteps, high, low, lr, conditioning_scale: float = 1.0):
        latents = np.asarray(latents, np.float32)
        b = latents.shape[0]
        t = np.broadcast_to(np.asarray(timesteps, np.float32).reshape(-1), (b,))
        high, low, lr = np.asarray(high, np.float32), np.asarray(low, np.float32), np.asarray(lr, np.float32)
        _check_shapes(self.model.config, latents, high, low, lr)
        eps, ctrl = self._fn(self.params, _nhwc(latents), jnp.asarray(t), jnp.asarray(high), jnp.asarray(low),
                             _nhwc(lr), jnp.float32(conditioning_scale))
        return _nchw(eps), {"latent_dfc": [_nchw(m) for m in ctrl.latent_dfc],
                            "rgb_dfc": [_nchw(m) for m in ctrl.rgb_dfc]}


def _check_shapes(cfg, latents, high, low, lr) -> None:
    b, c, h, w = latents.shape if latents.ndim == 4 else (None,) * 4
    down = 2 ** (len(cfg.block_out_channels) - 1)
    problems = []
    if latents.ndim != 4 or c != cfg.in_channels:
        problems.append(f"latents must be (B,{cfg.in_channels},h,w), got {latents.shape}")
    elif h % down or w % down:
        problems.append(f"latent size {h}x{w} must be a multiple of {down}")
    for name, e in (("high", high), ("low", low)):
        if e.ndim != 3 or e.shape[0] != b or e.shape[2] != cfg.cross_attention_dim:
            problems.append(f"{name} must be (B={b},77,{cfg.cross_attention_dim}), got {e.shape}")
    if lr.shape != (b, cfg.conditioning_channels, 8 * (h or 0), 8 * (w or 0)):
        problems.append(f"lr must be (B,3,8h,8w)=({b},3,{8 * (h or 0)},{8 * (w or 0)}), got {lr.shape}")
    if problems:
        raise ValueError("XPSRDenoiser: " + "; ".join(problems))

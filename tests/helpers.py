"""Shared test builders: tiny PyTorch oracles with random (not default) weights, layout converters."""

from __future__ import annotations

import numpy as np
import torch

from xpsr_jax import testing

# diffusers' UNet2DConditionModel takes the preset's fields as they are. The parity and conversion tests keep SD1.5's
# four levels (the train and sampling programs use the two-level preset, which compiles in half the time)
TINY_UNET = testing.UNET_4_LEVELS


def tiny_train_config(steps: int = 4, mesh=testing.MESH_8):
    """``--config tiny`` on the 8-device test mesh, ``steps`` steps, a checkpoint every 2."""
    from xpsr_jax.configs import tiny

    c = tiny.get_config()
    c.mesh.shape = mesh
    c.num_train_steps = steps
    c.checkpoint_every = 2
    return c


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.06) -> torch.nn.Module:
    """Every tensor random, norms around 1, so no zero-init layer hides a wiring mistake."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            is_norm_scale = p.ndim == 1 and "norm" in name and name.endswith("weight")
            p.copy_(noise * (0.1 / std) + 1.0 if is_norm_scale else noise)
    return module.eval()


def state_dict_np(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def nhwc(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def nchw(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def residual_shapes(batch: int, h: int, w: int, channels=TINY_UNET["block_out_channels"],
                    layers: int = TINY_UNET["layers_per_block"]):
    """NCHW shapes of the 12 ControlNet down residuals and the mid residual for latents h x w."""
    shapes = [(batch, channels[0], h, w)]
    for i, c in enumerate(channels):
        shapes += [(batch, c, h, w)] * layers
        if i < len(channels) - 1:
            h, w = (h + 1) // 2, (w + 1) // 2
            shapes.append((batch, c, h, w))
    return shapes, (batch, channels[-1], h, w)

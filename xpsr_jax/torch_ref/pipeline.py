"""The XPSR inference chain in PyTorch, step for step as the official test script runs it (§5.3-§5.5).

Built from the reference models of this package (XPSR UNet/ControlNet), diffusers' ``AutoencoderKL`` and
``DDPMScheduler`` and transformers' ``CLIPTextModel``; it is the oracle the JAX pipeline is compared with. It starts
from the pre-processed image (the PIL resizes of §5.2 are shared code, tested on their own) and takes its random
numbers as arguments, so both implementations can be fed the same draws:

    >>> ref = TorchSRPipeline.from_flax_checkpoint("weights/xpsr-flax")
    >>> out = ref(image_u8, ids_high, ids_low, noises)   # noises: {"vae", "n1", "n2", "steps"} NHWC arrays
    >>> out["image"]                                       # (H, W, 3) uint8 after the AdaIN colour fix

CFG batch: [uncond, cond] for both prompt streams and both networks, the LR image twice (§5.3).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.schedulers import scheduling_ddpm
from transformers import CLIPTextModel

from xpsr_jax.torch_ref.checkpoint import load_official

# SD1.5's scheduler/scheduler_config.json, the fields that matter.
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      steps_offset=1, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon",
                      timestep_spacing="leading", variance_type="fixed_small")


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 3, 1, 2)))


def _put(x: torch.Tensor, pipe: "TorchSRPipeline") -> torch.Tensor:
    return x.to(device=pipe.device, dtype=pipe.dtype if x.is_floating_point() else x.dtype)


@contextlib.contextmanager
def _scheduler_noise(draws: Iterator[torch.Tensor]):
    """Make DDPMScheduler.step take its per-step noise from ``draws`` instead of its generator."""
    original = scheduling_ddpm.randn_tensor

    def given(shape, generator=None, device=None, dtype=None, **_):
        x = next(draws)
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"step noise of shape {tuple(x.shape)} for a sample of shape {tuple(shape)}")
        return x.to(device=device, dtype=dtype)

    scheduling_ddpm.randn_tensor = given
    try:
        yield
    finally:
        scheduling_ddpm.randn_tensor = original


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] each -> uint8 (H, W, 3): the official AdaIN (unbiased variance + 1e-5), clamped,
    then ``ToPILImage``'s ``mul(255).byte()`` truncation."""
    def mean_std(x):
        flat = x.reshape(1, 3, -1)
        return flat.mean(2).reshape(1, 3, 1, 1), (flat.var(2) + 1e-5).sqrt().reshape(1, 3, 1, 1)

    mr, sr = mean_std(reference)
    mi, si = mean_std(image)
    out = ((image - mi) / si * sr + mr).clamp(0, 1)
    return out[0].mul(255).byte().permute(1, 2, 0).numpy()


class TorchSRPipeline:
    def __init__(self, unet, controlnet, vae: AutoencoderKL, text_encoder: CLIPTextModel):
        self.unet, self.controlnet, self.vae, self.text_encoder = unet, controlnet, vae, text_encoder
        self.scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)  # ignores the DDIM-only field
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def to(self, device, dtype: torch.dtype = torch.float32) -> "TorchSRPipeline":
        """Move the networks (the official test runs everything in one dtype, fp32 by default)."""
        for m in (self.unet, self.controlnet, self.vae, self.text_encoder):
            m.to(device=device, dtype=dtype)
        self.device, self.dtype = torch.device(device), dtype
        return self

    @classmethod
    def from_flax_checkpoint(cls, path: str | Path) -> "TorchSRPipeline":
        """Export a Flax checkpoint folder with this package's exporters and load the results in PyTorch."""
        from xpsr_jax.models.clip_text import ClipTextConfig
        from xpsr_jax.models.vae_config import VAEConfig
        from xpsr_jax.weights import checkpoint
        from xpsr_jax.weights.clip_text import save_clip_text
        from xpsr_jax.weights.vae import save_vae
        from xpsr_jax.weights.xpsr_convert import write_official

        meta, params = checkpoint.load(path)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_official(checkpoint.unet_config(meta), params, tmp / "xpsr")
            unet, controlnet = load_official(tmp / "xpsr")
            save_vae(params["vae"], VAEConfig(**meta["vae_config"]), tmp / "vae")
            vae = AutoencoderKL.from_pretrained(tmp / "vae").eval()
            save_clip_text(tmp / "text_encoder", ClipTextConfig.from_dict(meta["text_encoder_config"]),
                           params["text_encoder"])
            text_encoder = CLIPTextModel.from_pretrained(tmp / "text_encoder").eval()
        return cls(unet, controlnet, vae, text_encoder)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, ids_high: np.ndarray, ids_low: np.ndarray, noises: dict,
                 steps: int = 20, guidance_scale: float = 4.5, conditioning_scale: float = 1.0,
                 added_noise_level: int = 800) -> dict[str, np.ndarray]:
        """One image. image: (H, W, 3) uint8 pre-processed; ids_high, ids_low: (2, 77) [negative, positive];
        noises: NHWC arrays of one image (batch 1): "vae", "n1", "n2" (1, h, w, 4) and "steps" (T, 1, h, w, 4).
        -> {"latent": final latent (1, h, w, 4) NHWC, "decoded": uint8 (H, W, 3) before, "image" after AdaIN}."""
        cond = _put(torch.from_numpy(np.asarray(image, np.float32) / np.float32(255.0)).permute(2, 0, 1)[None], self)
        e_high = self.text_encoder(_put(torch.from_numpy(np.asarray(ids_high, np.int64)), self))[0]  # (2, 77, D)
        e_low = self.text_encoder(_put(torch.from_numpy(np.asarray(ids_low, np.int64)), self))[0]

        sched = self.scheduler
        sched.set_timesteps(steps)
        dist = self.vae.encode(cond * 2.0 - 1.0).latent_dist
        z = (dist.mean + dist.std * _put(_nchw(noises["vae"]), self)) * self.vae.config.scaling_factor
        z = sched.add_noise(z, _put(_nchw(noises["n1"]), self), sched.timesteps[:1])
        z = sched.add_noise(z, _put(_nchw(noises["n2"]), self), torch.tensor([added_noise_level]))
        z = z * sched.init_noise_sigma

        cond2 = torch.cat([cond, cond])
        draws = iter([_put(_nchw(n), self) for n in noises["steps"]])
        with _scheduler_noise(draws):
            for t in sched.timesteps:
                zz = sched.scale_model_input(torch.cat([z, z]), t)
                out = self.controlnet(zz, t, e_high, e_low, cond2, conditioning_scale)
                eps = self.unet(zz, t, e_high, out.down_residuals, out.mid_residual)
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
                z = sched.step(eps, t, z, return_dict=False)[0]

        x = self.vae.decode(z / self.vae.config.scaling_factor, return_dict=False)[0]
        x = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        decoded = (x * 255).round().astype(np.uint8)[0]
        as_tensor = torch.from_numpy(decoded.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        fixed = adain_color_fix(as_tensor, cond.float().cpu())
        return {"latent": z.permute(0, 2, 3, 1).float().cpu().numpy(), "decoded": decoded, "image": fixed}

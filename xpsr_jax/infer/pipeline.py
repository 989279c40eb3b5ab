"""XPSR super-resolution of LR images: the whole inference chain of the official test script (§5), in JAX.

    >>> from xpsr_jax.infer import SRPipeline, Prompt
    >>> pipe = SRPipeline.from_pretrained("weights/xpsr-flax")          # settings: SRSettings() = the paper's
    >>> [res] = pipe.super_resolve([lr_uint8], [Prompt("a red car on a street", "the image is blurry")])
    >>> res.image.shape                                                  # (4h, 4w, 3) uint8

Per batch of same-size images: pre-process (PIL, host) -> CLIP text encoder on the four prompts of each image ->
VAE encode of the pre-processed image (whole or tiled) -> start latent (posterior sample x scaling factor, noised
at the sampler's first timestep and again at ``added_noise_level``) -> the jitted denoising loop
(:mod:`xpsr_jax.infer.denoise`) -> VAE decode -> uint8 with rounding -> colour fix against the pre-processed image
-> PIL bicubic to round(LR size x upscale).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from xpsr_jax import paths
from xpsr_jax.data.tokenizer import ClipTokenizer
from xpsr_jax.diffusion import faithful_start_latent, make_sampler
from xpsr_jax.infer import noise
from xpsr_jax.infer.colorfix import color_fix
from xpsr_jax.infer.denoise import Conditions, LatentTiles, cached_loop, images_over
from xpsr_jax.infer.preprocess import SizePlan, plan_sizes, to_output_size, to_process_size
from xpsr_jax.infer.prompts import Prompt, PromptTexts, prompt_texts, token_ids
from xpsr_jax.infer.settings import SRSettings
from xpsr_jax.infer.tile_plan import TilePlan, device_budget, plan_tiles, uses_flash_attention
from xpsr_jax.infer.tiling import core_layout
from xpsr_jax.infer.vae_tiles import TiledVAE
from xpsr_jax.models.clip_text import ClipTextConfig, ClipTextModel
from xpsr_jax.models.config import UNetConfig
from xpsr_jax.models.vae_config import VAEConfig
from xpsr_jax.models.xpsr import XPSR
from xpsr_jax.weights import checkpoint

COMPONENTS = ("unet", "controlnet", "vae", "text_encoder")


@dataclasses.dataclass
class SRResult:
    """One super-resolved image. image: (round(h*s), round(w*s), 3) uint8. seconds: this image's share of each
    stage of its batch. tiles: the :class:`TilePlan` used, described."""

    image_id: str
    image: np.ndarray
    plan: SizePlan
    prompt: Prompt
    texts: PromptTexts
    tiles: dict
    seconds: dict
    extras: dict = dataclasses.field(default_factory=dict)  # with keep_intermediates: "latent" (final, NHWC),
    # "decoded" (uint8 before the colour fix) and "processed" (the pre-processed LR image), process size

    def sidecar(self, settings: SRSettings) -> dict[str, Any]:
        """What the JSON file beside the output records: enough to reproduce the pixels."""
        return {"id": self.image_id, "settings": settings.pixel_settings(),
                "sizes": {k: list(v) for k, v in dataclasses.asdict(self.plan).items()} | {"output": list(
                    self.plan.output)},
                "prompts": self.texts.as_dict(), "prompt_source": dict(self.prompt.source),
                "tiles": self.tiles, "seconds": self.seconds}


class BatchItem(NamedTuple):
    """One image of a :meth:`SRPipeline.run_batch` call: the LR image ((h, w, 3) uint8), its size plan, its
    prompts, and the id that seeds its noise."""

    image: np.ndarray
    plan: SizePlan
    prompt: Prompt
    image_id: str


@dataclasses.dataclass(frozen=True)
class Batch:
    """Indices of images processed in one call, their common plan, and whether they are split over devices."""

    indices: tuple[int, ...]
    tile_plan: TilePlan
    sharded: bool


def _start_latent(mean, logvar, keys, t1, t2, scaling, from_noise: bool):
    """Posterior sample x scaling, noised at t1 then t2; or N(0, I) (``from_noise``). All (B, h, w, c)."""
    shape = mean.shape[1:]
    if from_noise:
        return noise.normal(noise.role(keys, noise.N1), shape)
    eps = noise.normal(noise.role(keys, noise.VAE), shape)
    z_lr = (mean + jnp.exp(0.5 * logvar) * eps) * scaling
    n1 = noise.normal(noise.role(keys, noise.N1), shape)
    n2 = noise.normal(noise.role(keys, noise.N2), shape)
    return faithful_start_latent(z_lr, n1, n2, t1, t2)


_START = jax.jit(_start_latent, static_argnames=("from_noise",))


@functools.lru_cache(maxsize=8)
def _text_fn(text_model: ClipTextModel):
    return jax.jit(lambda p, ids: text_model.apply({"params": p}, ids))


def decoded_to_uint8(x) -> np.ndarray:
    """VAE output (B, H, W, 3) in about [-1, 1] -> uint8 with rounding, as diffusers' image processor does."""
    x = np.asarray(x, np.float32)
    return np.round(np.clip(x / np.float32(2) + np.float32(0.5), 0, 1) * np.float32(255)).astype(np.uint8)


class SRPipeline:
    """Loaded models + compiled functions + settings. Build with :meth:`from_pretrained`."""

    def __init__(self, unet_config: UNetConfig, vae_config: VAEConfig, text_config: ClipTextConfig,
                 params: dict, tokenizer: ClipTokenizer, settings: SRSettings | None = None):
        self.settings = settings or SRSettings()
        s = self.settings
        missing = [c for c in COMPONENTS if c not in params]
        if missing:
            raise ValueError(f"super-resolution needs the {missing} parameters (convert with --sd15 to include "
                             f"the VAE and text encoder)")
        compute = jnp.bfloat16 if s.dtype == "bfloat16" else None
        self.model = XPSR(unet_config, attention_impl=s.attention, dtype=compute)
        den = {"unet": params["unet"], "controlnet": params["controlnet"]}
        if compute is not None:  # cast once: the loop then never converts weights
            den = jax.tree.map(lambda a: jnp.asarray(a, compute), den)
        self.denoiser_params = jax.tree.map(jnp.asarray, den)
        self.vae_config = vae_config
        self.vae = TiledVAE(vae_config, jax.tree.map(jnp.asarray, params["vae"]), s.attention)
        self.text_params = jax.tree.map(jnp.asarray, params["text_encoder"])
        self._encode_text = _text_fn(ClipTextModel(text_config, attention_impl=s.attention))
        self.tokenizer = tokenizer
        self.sampler = make_sampler(s.sampler, s.steps, eta=s.eta)
        self._start = _START
        self._replicated: dict = {}
        self.param_bytes = sum(a.nbytes for a in jax.tree.leaves(
            (self.denoiser_params, self.vae.params, self.text_params)))

    @classmethod
    def from_pretrained(cls, path: str | Path, settings: SRSettings | None = None) -> "SRPipeline":
        """A Flax checkpoint folder or gs:// prefix (``xpsr-jax convert ... --sd15``) -> pipeline."""
        meta, params = checkpoint.load(path)
        for key, what in (("vae_config", "VAE"), ("text_encoder_config", "text encoder")):
            if key not in meta:
                raise checkpoint.CheckpointError(f"{path} holds no {what}; convert it with --sd15 SD1.5_FOLDER")
        tok_dir = paths.as_path(path) / "tokenizer"  # local or gs://
        if tok_dir.is_dir():
            with paths.local_copy(tok_dir) as local:
                tokenizer = ClipTokenizer.load(local)
        else:
            tokenizer = ClipTokenizer.load(None)
        return cls(checkpoint.unet_config(meta), VAEConfig(**meta["vae_config"]),
                   ClipTextConfig.from_dict(meta["text_encoder_config"]), params, tokenizer, settings)

    def with_params(self, params: dict) -> "SRPipeline":
        """The same pipeline (settings, compiled functions) with other weights of the same shapes, e.g. the
        current weights of a training run."""
        new = copy.copy(self)  # shares the compiled functions, the tokenizer and the settings
        compute = jnp.bfloat16 if self.settings.dtype == "bfloat16" else None
        den = {"unet": params["unet"], "controlnet": params["controlnet"]}
        new.denoiser_params = jax.tree.map(lambda a: jnp.asarray(a, compute), den)
        new.vae = copy.copy(self.vae)
        new.vae.params = jax.tree.map(jnp.asarray, params["vae"])
        new.text_params = jax.tree.map(jnp.asarray, params["text_encoder"])
        new._replicated = {}
        return new

    def with_settings(self, **changes) -> "SRPipeline":
        """A pipeline with changed settings that shares this one's parameters (no reload, new compiles only
        where shapes or static choices change)."""
        new = copy.copy(self)
        new.settings = self.settings.replace(**changes)
        if new.settings.dtype != self.settings.dtype or new.settings.attention != self.settings.attention:
            raise ValueError("dtype, attention_impl and splash_min_length need a new pipeline (from_pretrained)")
        new.sampler = make_sampler(new.settings.sampler, new.settings.steps, eta=new.settings.eta)
        return new

    # --- planning ------------------------------------------------------------------------------------------------
    def plan(self, lr_size: tuple[int, int], name: str = "<image>") -> SizePlan:
        """(width, height) of an LR image -> its sizes through the pipeline (raises for too large outputs)."""
        s = self.settings
        return plan_sizes(lr_size, s.upscale, s.process_size, s.max_process_pixels, name)

    def tile_plan(self, latent_hw: tuple[int, int], images: int) -> TilePlan:
        s = self.settings
        return plan_tiles(latent_hw, images, self.model.config, self.vae_config,
                          budget=device_budget(s.memory_budget_gb), param_bytes=self.param_bytes, dtype=s.dtype,
                          flash=uses_flash_attention(s.dtype, s.attention_impl), max_batch=s.batch_size,
                          max_latent_tile=s.max_latent_tile, max_vae_tile=s.max_vae_tile)

    def schedule(self, plans: Sequence[SizePlan]) -> list[Batch]:
        """Group images of one process size into calls: sharded over all local devices when a whole multiple of
        them is available, else one device. Tiled images run one per call (their tiles are batched instead)."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, p in enumerate(plans):
            groups[p.latent].append(i)
        n_dev = len(jax.local_devices())
        batches = []
        for latent, idx in groups.items():
            tp = self.tile_plan(latent, len(idx))
            pos = 0
            if n_dev > 1 and tp.latent_tile is None:
                per_call = tp.batch * n_dev
                while len(idx) - pos >= n_dev:
                    take = min(per_call, (len(idx) - pos) // n_dev * n_dev)
                    batches.append(Batch(tuple(idx[pos:pos + take]), tp, True))
                    pos += take
            while pos < len(idx):
                batches.append(Batch(tuple(idx[pos:pos + tp.batch]), tp, False))
                pos += tp.batch
        return batches

    # --- running -------------------------------------------------------------------------------------------------
    def super_resolve(self, images: Sequence[np.ndarray], prompts: Sequence[Prompt] | None = None,
                      image_ids: Sequence[str] | None = None, keep_intermediates: bool = False
                      ) -> list[SRResult]:
        """LR images ((h, w, 3) uint8 each, any sizes) -> results in input order. ``image_ids`` seed each
        image's noise (default "0", "1", ...); ``prompts`` default to empty ones."""
        prompts = list(prompts) if prompts is not None else [Prompt() for _ in images]
        image_ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(images))]
        if not len(prompts) == len(image_ids) == len(images):
            raise ValueError(f"{len(images)} images, {len(prompts)} prompts and {len(image_ids)} ids differ")
        plans = [self.plan((im.shape[1], im.shape[0]), image_ids[i]) for i, im in enumerate(images)]
        out: list[SRResult | None] = [None] * len(images)
        for batch in self.schedule(plans):
            items = [BatchItem(images[i], plans[i], prompts[i], image_ids[i]) for i in batch.indices]
            res = self.run_batch(items, batch.tile_plan, sharded=batch.sharded,
                                 keep_intermediates=keep_intermediates)
            for i, r in zip(batch.indices, res):
                out[i] = r
        return out  # type: ignore[return-value]

    def run_batch(self, items: Sequence[BatchItem], tile_plan: TilePlan, *, sharded: bool = False,
                  keep_intermediates: bool = False) -> list[SRResult]:
        """One call's worth of images, all with the same ``plan.process`` size."""
        s = self.settings
        images, plans = [it.image for it in items], [it.plan for it in items]
        prompts, image_ids = [it.prompt for it in items], [it.image_id for it in items]
        if len({p.process for p in plans}) != 1:
            raise ValueError("run_batch needs images of one process size; use super_resolve")
        times: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str, value=None):
            nonlocal clock
            if value is not None:
                jax.block_until_ready(value)
            now = time.perf_counter()
            times[name] = times.get(name, 0.0) + now - clock
            clock = now
            return value

        cond_u8 = np.stack([to_process_size(im, p) for im, p in zip(images, plans)])
        texts = [prompt_texts(p, s) for p in prompts]
        hi_ids, lo_ids = token_ids(self.tokenizer, texts)
        lap("preprocess")
        b = len(images)
        ids = np.concatenate([hi_ids, lo_ids]).reshape(-1, hi_ids.shape[-1])
        emb = self._encode_text(self.text_params, jnp.asarray(ids))
        e_high, e_low = emb[: 2 * b].reshape(b, 2, *emb.shape[1:]), emb[2 * b:].reshape(b, 2, *emb.shape[1:])
        lap("text", emb)

        keys = noise.image_keys(s.seed, image_ids)
        cond = cond_u8.astype(np.float32) / np.float32(255.0)
        with self._placement(sharded):
            put = self._sharder(sharded)
            h, w = plans[0].latent
            vae_layout = None if tile_plan.vae_tile is None else core_layout((h, w), tile_plan.vae_tile,
                                                                              s.vae_tile_context)
            mean, logvar = self.vae.encode(put(cond * 2.0 - 1.0), vae_layout)
            lap("vae_encode", mean)
            z = self._start(put(mean), put(logvar), put(keys), jnp.int32(self.sampler.timesteps[0]),
                            jnp.int32(s.added_noise_level), jnp.float32(self.vae_config.scaling_factor),
                            from_noise=s.start_from_noise)
            loop = self._loop(tile_plan, (h, w))
            params = self._replicate(sharded)
            conds = Conditions(lr=put(cond), e_high=put(e_high), e_low=put(e_low),
                               guidance_scale=jnp.float32(s.guidance_scale),
                               conditioning_scale=jnp.float32(s.conditioning_scale))
            z0 = loop(params, z, conds, put(noise.role(keys, noise.STEPS)))
            lap("denoise", z0)
            decoded = self.vae.decode(z0 / jnp.float32(self.vae_config.scaling_factor), vae_layout)
        pixels = decoded_to_uint8(lap("vae_decode", decoded))
        results = []
        for i in range(b):
            fixed = color_fix(s.color_fix, pixels[i], cond_u8[i])
            results.append(to_output_size(fixed, plans[i]))
        lap("postprocess")
        share = {k: round(v / b, 4) for k, v in times.items()}
        tiles = tile_plan.describe() | {"images_in_call": b, "sharded": sharded}
        extras = [{} for _ in range(b)]
        if keep_intermediates:
            z_host = np.asarray(z0)
            extras = [{"latent": z_host[i], "decoded": pixels[i], "processed": cond_u8[i]} for i in range(b)]
        return [SRResult(image_ids[i], results[i], plans[i], prompts[i], texts[i], tiles, share, extras[i])
                for i in range(b)]

    def _loop(self, tile_plan: TilePlan, latent_hw: tuple[int, int]):
        s = self.settings
        tiles = None
        if tile_plan.latent_tile is not None:
            tiles = LatentTiles(latent_hw, tile_plan.latent_tile, s.latent_tile_overlap, s.official_tile_weights,
                                tile_plan.tile_batch)
        return cached_loop(self.model, s.sampler, s.steps, float(s.eta), tiles)

    def _mesh(self) -> Mesh:
        return Mesh(np.array(jax.local_devices()), ("batch",))

    def _placement(self, sharded: bool):
        """Where a call's programs are traced: a sharded call's with its images split over the local devices."""
        return images_over(self._mesh()) if sharded else contextlib.nullcontext()

    def _sharder(self, sharded: bool):
        if not sharded:
            return lambda x: x
        spec = NamedSharding(self._mesh(), P("batch"))
        return lambda x: jax.device_put(x, spec)

    def _replicate(self, sharded: bool):
        if not sharded:
            return self.denoiser_params
        if "params" not in self._replicated:
            self._replicated["params"] = jax.device_put(self.denoiser_params, NamedSharding(self._mesh(), P()))
        return self._replicated["params"]

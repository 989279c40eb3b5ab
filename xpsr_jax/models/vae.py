"""Stable Diffusion's VAE: diffusers' ``AutoencoderKL`` in Flax (NHWC), plus NumPy entry points in PyTorch layout.

Images (B, H, W, in_channels) in [-1, 1] -> encoder -> quant_conv -> moments (B, H/f, W/f, 2 * latent) ->
:class:`DiagonalGaussian`; latents (B, H/f, W/f, latent) -> post_quant_conv -> decoder -> images, with f = 8 for
SD1.5. Latents are *unscaled* here, as in diffusers: the UNet sees ``latent * config.scaling_factor``.

Module names mirror diffusers' so :mod:`xpsr_jax.weights.vae` maps keys by the generic rules alone.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.struct
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from xpsr_jax.models.vae_config import SD15, VAEConfig
from xpsr_jax.nn.attention import dot_product_attention
from xpsr_jax.nn.layers import Conv2d, Dtype, GroupNorm, Linear
from xpsr_jax.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D

# diffusers hard-codes these for the VAE, whatever the config says.
RESNET_EPS = 1e-6
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0

__all__ = ["AutoencoderKL", "DiagonalGaussian", "VAEConfig", "SD15", "abstract_params", "init_params",
           "encode", "encode_distribution", "decode"]


@flax.struct.dataclass
class DiagonalGaussian:
    """The posterior q(z | x): mean and log-variance (B, h, w, latent), logvar clipped to [-30, 20] like diffusers."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
        """moments (..., 2 * latent), mean first along the last axis."""
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls(mean=mean, logvar=jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> jax.Array:
        return jnp.exp(self.logvar)

    def mode(self) -> jax.Array:
        return self.mean

    def sample(self, rng: jax.Array) -> jax.Array:
        """mean + std * N(0, 1); the noise is drawn in fp32, then cast to the mean's dtype."""
        eps = jax.random.normal(rng, self.mean.shape, jnp.float32)
        return (self.mean + self.std * eps.astype(self.mean.dtype)).astype(self.mean.dtype)

    def kl(self) -> jax.Array:
        """KL(q || N(0, I)) summed over (h, w, latent) -> (B,)."""
        m, lv = self.mean.astype(jnp.float32), self.logvar.astype(jnp.float32)
        return 0.5 * jnp.sum(jnp.square(m) + jnp.exp(lv) - 1.0 - lv, axis=(1, 2, 3))


class VAEAttention(nn.Module):
    """The mid block's single-head spatial self-attention: GroupNorm -> q, k, v (with bias) -> attention -> to_out,
    added to the input. x (B, H, W, C) -> (B, H, W, C).

    Not :class:`xpsr_jax.nn.attention.Attention` because diffusers keeps ``group_norm`` inside this block, and the
    Flax path must stay ``attentions_0/to_q`` for the key map; the kernel choice is still the shared one.
    """

    groups: int
    impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, h, w, c = x.shape
        t = GroupNorm(self.groups, RESNET_EPS, name="group_norm", **kw)(x).reshape(b, h * w, 1, c)
        q = Linear(c, name="to_q", **kw)(t)
        k = Linear(c, name="to_k", **kw)(t)
        v = Linear(c, name="to_v", **kw)(t)
        o = dot_product_attention(q, k, v, self.impl).reshape(b, h * w, c)
        o = Linear(c, name="to_out_0", **kw)(o).reshape(b, h, w, c)
        return x.astype(o.dtype) + o


class MidBlock(nn.Module):
    """resnet, then (attention, resnet) once; channels unchanged. x (B, H, W, C) -> (B, H, W, C)."""

    groups: int
    add_attention: bool = True
    attention_impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        x = ResnetBlock2D(c, self.groups, RESNET_EPS, use_time_emb=False, name="resnets_0", **kw)(x)
        if self.add_attention:
            x = VAEAttention(self.groups, self.attention_impl, name="attentions_0", **kw)(x)
        return ResnetBlock2D(c, self.groups, RESNET_EPS, use_time_emb=False, name="resnets_1", **kw)(x)


class DownEncoderBlock2D(nn.Module):
    """``num_layers`` resnets, then (unless last) a stride-2 downsample. (B, H, W, Cin) -> (B, H/2, W/2, C)."""

    out_channels: int
    num_layers: int
    groups: int
    add_downsample: bool
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for j in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, RESNET_EPS, use_time_emb=False, name=f"resnets_{j}",
                              **kw)(x)
        if self.add_downsample:
            # padding=0: the VAE encoder pads (0, 1) on the bottom/right before its stride-2 conv.
            x = Downsample2D(self.out_channels, padding=0, name="downsamplers_0", **kw)(x)
        return x


class UpDecoderBlock2D(nn.Module):
    """``num_layers`` resnets, then (unless last) a nearest x2 upsample + conv. (B, H, W, Cin) -> (B, 2H, 2W, C)."""

    out_channels: int
    num_layers: int
    groups: int
    add_upsample: bool
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for j in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, RESNET_EPS, use_time_emb=False, name=f"resnets_{j}",
                              **kw)(x)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, name="upsamplers_0", **kw)(x)
        return x


class Encoder(nn.Module):
    """images (B, H, W, in_channels) -> moments before quant_conv (B, H/f, W/f, 2 * latent_channels)."""

    config: VAEConfig
    attention_impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        groups, chans = cfg.norm_num_groups, cfg.block_out_channels
        x = Conv2d(chans[0], name="conv_in", **kw)(x)
        for i, ch in enumerate(chans):
            x = DownEncoderBlock2D(ch, cfg.layers_per_block, groups, add_downsample=i < len(chans) - 1,
                                   name=f"down_blocks_{i}", **kw)(x)
        x = MidBlock(groups, cfg.mid_block_add_attention, self.attention_impl, name="mid_block", **kw)(x)
        x = jax.nn.silu(GroupNorm(groups, RESNET_EPS, name="conv_norm_out", **kw)(x))
        return Conv2d(2 * cfg.latent_channels, name="conv_out", **kw)(x)


class Decoder(nn.Module):
    """latents after post_quant_conv (B, h, w, latent_channels) -> images (B, h*f, w*f, out_channels)."""

    config: VAEConfig
    attention_impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        groups, chans = cfg.norm_num_groups, tuple(reversed(cfg.block_out_channels))
        x = Conv2d(chans[0], name="conv_in", **kw)(z)
        x = MidBlock(groups, cfg.mid_block_add_attention, self.attention_impl, name="mid_block", **kw)(x)
        for i, ch in enumerate(chans):
            # The decoder has one resnet more per block than the encoder.
            x = UpDecoderBlock2D(ch, cfg.layers_per_block + 1, groups, add_upsample=i < len(chans) - 1,
                                 name=f"up_blocks_{i}", **kw)(x)
        x = jax.nn.silu(GroupNorm(groups, RESNET_EPS, name="conv_norm_out", **kw)(x))
        return Conv2d(cfg.out_channels, name="conv_out", **kw)(x)


class AutoencoderKL(nn.Module):
    """The whole VAE. ``encode``/``decode`` are the methods to ``apply``; ``__call__`` runs both (and is what
    ``init`` traces). ``dtype`` is the compute dtype (None: the input's), ``param_dtype`` the storage dtype."""

    config: VAEConfig = SD15
    attention_impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = Encoder(cfg, self.attention_impl, **kw)
        self.decoder = Decoder(cfg, self.attention_impl, **kw)
        if cfg.use_quant_conv:
            self.quant_conv = Conv2d(2 * cfg.latent_channels, kernel_size=1, padding=0, **kw)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = Conv2d(cfg.latent_channels, kernel_size=1, padding=0, **kw)

    def encode(self, images: jax.Array) -> DiagonalGaussian:
        """images (B, H, W, in_channels) in [-1, 1], H and W multiples of f -> posterior over (B, H/f, W/f, 4)."""
        moments = self.encoder(images)
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, latents: jax.Array) -> jax.Array:
        """unscaled latents (B, h, w, latent_channels) -> images (B, h*f, w*f, out_channels), roughly [-1, 1]."""
        if self.config.use_post_quant_conv:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)

    def __call__(self, images: jax.Array, sample_rng: jax.Array | None = None):
        """Reconstruction: (images (B, H, W, out_channels), posterior). Decodes a sample when ``sample_rng`` is
        given, the mean otherwise."""
        posterior = self.encode(images)
        z = posterior.mean if sample_rng is None else posterior.sample(sample_rng)
        return self.decode(z), posterior


# --- parameters ----------------------------------------------------------------------------------------------------

def _dummy_images(config: VAEConfig, dtype) -> jax.Array:
    side = config.downsample_factor
    return jnp.zeros((1, side, side, config.in_channels), dtype)


def init_params(rng: jax.Array, config: VAEConfig = SD15, param_dtype: Dtype = jnp.float32) -> dict:
    """Fresh PyTorch-style initialised parameters (unboxed; use ``AutoencoderKL.init`` for the logical-axis boxes)."""
    model = AutoencoderKL(config, param_dtype=param_dtype)
    # One jit instead of op-by-op dispatch. Even so, XLA:CPU takes ~20 s to compile the ~120 threefry draws of
    # a tiny config on 2 cores; tests get parameters from PyTorch state dicts or abstract_params instead.
    init = jax.jit(lambda r: nn.meta.unbox(model.init(r, _dummy_images(config, param_dtype))["params"]))
    return init(rng)


@functools.lru_cache(maxsize=8)
def abstract_params(config: VAEConfig = SD15, param_dtype: Dtype = jnp.float32) -> dict:
    """The parameter tree as ``jax.ShapeDtypeStruct`` leaves, without allocating anything."""
    return jax.eval_shape(functools.partial(init_params, config=config, param_dtype=param_dtype),
                          jax.random.key(0))


# --- NumPy entry points in PyTorch layout --------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _compiled(config: VAEConfig, method: str, dtype, attention_impl: str):
    model = AutoencoderKL(config, attention_impl=attention_impl, dtype=dtype)
    if method == "encode":
        def fn(params, x):
            post = model.apply({"params": params}, x, method=AutoencoderKL.encode)
            return post.mean, post.logvar
    else:
        def fn(params, z):
            return model.apply({"params": params}, z, method=AutoencoderKL.decode)
    return jax.jit(fn)


class ParamsMismatchError(ValueError):
    """Parameters that do not fit the VAE of the given config; the message names the Flax paths."""


def _check_params(params, config: VAEConfig) -> None:
    # Catches the easy mistake of passing a tiny model's parameters with the default (SD1.5) config. The paths
    # are Flax paths: checkpoint key spellings belong to xpsr_jax.weights.vae.
    got = traverse_util.flatten_dict(params, sep="/")
    want = traverse_util.flatten_dict(abstract_params(config), sep="/")
    shapes = [f"{p!r} has {np.shape(got[p])}, the config needs {want[p].shape}"
              for p in sorted(got.keys() & want.keys()) if tuple(np.shape(got[p])) != tuple(want[p].shape)]
    problems = [f"{what}: {_first(items)}" for what, items in (
        ("missing parameters", [repr(p) for p in sorted(want.keys() - got.keys())]),
        ("unexpected parameters", [repr(p) for p in sorted(got.keys() - want.keys())]),
        ("shape mismatch", shapes)) if items]
    if problems:
        raise ParamsMismatchError("the given parameters do not fit the VAE of this config: " + "; ".join(problems))


def _first(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _nchw_in(x, channels: int, what: str, dtype) -> jax.Array:
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{what}: expected (B, {channels}, H, W) in PyTorch layout, got {x.shape}")
    return jnp.asarray(x.transpose(0, 2, 3, 1), dtype)


def encode_distribution(params, images, config: VAEConfig = SD15, *, dtype=jnp.float32,
                        attention_impl: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """images (B, in_channels, H, W) in [-1, 1] -> (mean, clipped logvar), each (B, latent, H/f, W/f) NumPy."""
    _check_params(params, config)
    f = config.downsample_factor
    x = _nchw_in(images, config.in_channels, "encode", dtype)
    if x.shape[1] % f or x.shape[2] % f:
        raise ValueError(f"encode: H and W must be multiples of {f}, got {x.shape[1:3]}")
    mean, logvar = _compiled(config, "encode", dtype, attention_impl)(params, x)
    return (np.asarray(mean.astype(jnp.float32)).transpose(0, 3, 1, 2),
            np.asarray(logvar.astype(jnp.float32)).transpose(0, 3, 1, 2))


def encode(params, images, config: VAEConfig = SD15, *, dtype=jnp.float32, attention_impl: str = "auto"):
    """images (B, in_channels, H, W) in [-1, 1] -> the posterior mean (B, latent, H/f, W/f), unscaled, NumPy."""
    return encode_distribution(params, images, config, dtype=dtype, attention_impl=attention_impl)[0]


def decode(params, latents, config: VAEConfig = SD15, *, dtype=jnp.float32, attention_impl: str = "auto"):
    """unscaled latents (B, latent, h, w) -> images (B, out_channels, h*f, w*f), NumPy fp32."""
    _check_params(params, config)
    z = _nchw_in(latents, config.latent_channels, "decode", dtype)
    y = _compiled(config, "decode", dtype, attention_impl)(params, z)
    return np.asarray(y.astype(jnp.float32)).transpose(0, 3, 1, 2)

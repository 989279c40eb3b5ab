"""Where every random number of a super-resolution run comes from.

Each image gets its own key, ``fold_in(key(seed), crc32(image id))``, so its result depends on the seed and its
name only, never on which other images share its batch, their order, or the device count. From that key:

====  ===========================  ===============================================================
role  draw                         use
====  ===========================  ===============================================================
0     N(0, I) of the latent shape  the VAE posterior sample, z_lr = mean + std * eps
1     N(0, I)                      n1, the noise of the first noising (t = the sampler's first step)
2     N(0, I)                      n2, the noise of the second (t = added_noise_level)
3     a key per step               step i's noise N(0, I) from fold_in(key_3, i) (DDPM, DDIM with eta > 0)
====  ===========================  ===============================================================

The official code draws the same four kinds in the same order from one torch generator; the values differ (JAX
and PyTorch generators differ), the distribution does not. ``draw_all`` returns every array a run draws, so a
reference implementation can be fed exactly the same numbers.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

VAE, N1, N2, STEPS = 0, 1, 2, 3


def image_key(seed: int, image_id: str) -> jax.Array:
    """The key of one image: (seed, id) -> a typed JAX key."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(image_id.encode("utf-8")))


def image_keys(seed: int, image_ids: Sequence[str]) -> jax.Array:
    """(B,) keys for a batch of images."""
    return jnp.stack([image_key(seed, i) for i in image_ids])


def role(keys: jax.Array, which: int) -> jax.Array:
    """(B,) keys -> (B,) keys of one role (VAE, N1, N2, STEPS)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, which))(keys)


def normal(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """(B,) keys -> (B, *shape) float32 N(0, 1), one independent draw per image."""
    return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)


def step_noise(step_keys: jax.Array, i, shape: tuple[int, ...]) -> jax.Array:
    """(B,) STEPS-role keys, step index i (int or traced) -> (B, *shape) float32 noise of step i."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), shape, jnp.float32))(step_keys)


def draw_all(keys: jax.Array, latent_shape: tuple[int, int, int], num_steps: int) -> dict[str, np.ndarray]:
    """Every array a run draws for (B,) keys and a latent (h, w, c): NHWC NumPy arrays
    {"vae": (B,h,w,c), "n1": ..., "n2": ..., "steps": (num_steps, B, h, w, c)}."""
    out = {name: np.asarray(normal(role(keys, r), latent_shape)) for name, r in (("vae", VAE), ("n1", N1),
                                                                                  ("n2", N2))}
    sk = role(keys, STEPS)
    out["steps"] = np.stack([np.asarray(step_noise(sk, i, latent_shape)) for i in range(num_steps)])
    return out

"""Will super-resolution fit that TPU slice? The denoise loop compiled ahead of time for a slice, from any host.

The program is the pipeline's own (``denoise.cached_loop``: 20 DDPM steps with dual-stream CFG in one
``lax.scan``), at the latent size of a ``process``-pixel image, with the tile plan the pipeline would choose for a
budget of 80 % of the chip's HBM (above that the denoiser is tiled, e.g. at 2048 px). Images are sharded over the
slice's chips when there are several, the weights replicated, as ``SRPipeline.schedule`` does.
"""

from __future__ import annotations

from typing import Any

from xpsr_jax.train.plan import FitReport, compile_for_slice, fit_report
from xpsr_jax.train.tpu_topology import Topology, parse


def plan_denoise(topology: str | Topology, batch: int, process: int = 512, *, unet_config=None, vae_config=None,
                 settings=None, config_name: str = "sd15") -> FitReport:
    """Compile the denoise loop for ``batch`` images per chip of ``process`` x ``process`` pixels.

    ``unet_config``/``vae_config`` default to SD1.5's; ``settings`` (:class:`SRSettings`) to the official test
    settings in bfloat16. The report's ``extra`` holds the tile plan (``latent_tile`` None: whole latent)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from xpsr_jax.infer.denoise import Conditions, LatentTiles, cached_loop, images_over
    from xpsr_jax.infer.settings import SRSettings
    from xpsr_jax.infer.tile_plan import plan_tiles, uses_flash_attention
    from xpsr_jax.models.config import UNetConfig
    from xpsr_jax.models.vae_config import VAEConfig
    from xpsr_jax.models.xpsr import XPSR

    topology = parse(topology) if isinstance(topology, str) else topology
    settings = settings or SRSettings(dtype="bfloat16")
    unet_config = unet_config or UNetConfig()
    vae_config = vae_config or VAEConfig()
    compute = jnp.bfloat16 if settings.dtype == "bfloat16" else jnp.float32
    model = XPSR(unet_config, attention_impl=settings.attention, dtype=compute)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, compute), model.abstract_params())
    param_bytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(params))
    h = w = process // 8
    tile_plan = plan_tiles((h, w), batch, unet_config, vae_config, budget=int(0.8 * topology.hbm_bytes),
                           param_bytes=param_bytes, dtype=settings.dtype,
                           flash=uses_flash_attention(settings.dtype, settings.attention_impl, backend="tpu"),
                           max_batch=min(batch, settings.batch_size), max_latent_tile=settings.max_latent_tile)
    tiles = None
    if tile_plan.latent_tile is not None:
        tiles = LatentTiles((h, w), tile_plan.latent_tile, settings.latent_tile_overlap,
                            settings.official_tile_weights, tile_plan.tile_batch)
    per_chip = tile_plan.batch
    devices = topology.devices()
    mesh = Mesh(np.array(devices), ("batch",))
    images = per_chip * len(devices) if tiles is None else 1  # tiled images run one per call on one chip
    sharded = NamedSharding(mesh, P("batch")) if tiles is None else NamedSharding(mesh, P())
    replicated = NamedSharding(mesh, P())
    spec = lambda shape, dtype, s=sharded: jax.ShapeDtypeStruct(shape, dtype, sharding=s)  # noqa: E731
    d = unet_config.cross_attention_dim
    conds = Conditions(lr=spec((images, 8 * h, 8 * w, 3), jnp.float32),
                       e_high=spec((images, 2, 77, d), jnp.float32), e_low=spec((images, 2, 77, d), jnp.float32),
                       guidance_scale=spec((), jnp.float32, replicated),
                       conditioning_scale=spec((), jnp.float32, replicated))
    key_dtype = jax.random.key(0).dtype
    args: tuple[Any, ...] = (
        jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), params),
        spec((images, h, w, 4), jnp.float32), conds, spec((images,), key_dtype))
    loop = cached_loop(model, settings.sampler, settings.steps, float(settings.eta), tiles)

    def lower():
        with images_over(mesh):  # as the pipeline traces a sharded call: splash on TPU, split over the chips
            return loop.lower(*args)

    result = compile_for_slice(lower, repr(topology.describe_kwargs()))
    report = fit_report("denoise", config_name, topology, mesh, per_chip if tiles is None else 1, images, result)
    report.extra |= {"process_px": process, "latent": [h, w], "steps": settings.steps, "dtype": settings.dtype,
                    "latent_tile": tile_plan.latent_tile, "tile_batch": tile_plan.tile_batch}
    if not report.fits:
        report.remedies = ["smaller --batch-size", "--dtype bfloat16" if settings.dtype != "bfloat16" else
                           "a lower --memory-budget-gb (smaller denoiser tiles)"]
    return report

"""Assembles a run: networks, mesh shardings, the train state born sharded, and the step compiled ahead of time."""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from xpsr_jax.train import models, partition
from xpsr_jax.train.step import TrainState, cast_floats, make_optimizer, train_step


@dataclasses.dataclass
class StatePlan:
    """How the train state is laid out on the mesh; building it compiles nothing (export uses it alone)."""

    nets: models.Networks
    mesh: Mesh
    rules: tuple
    mask: Any
    tx: Any
    param_shardings: Any
    state_shardings: Any
    abstract_state: Any  # ShapeDtypeStructs carrying their shardings (restore target)
    state_from_params: Callable[[Any, jax.Array], TrainState]  # jitted; creates the state already sharded


@dataclasses.dataclass
class Trainer:
    config: ml_collections.ConfigDict
    plan: StatePlan
    batch_shardings: dict[str, NamedSharding]
    step: Any  # compiled: (state, batch) -> (state, metrics)
    compile_seconds: float
    flops_per_step: float | None  # XLA's count for the compiled program: per device, and blind to GPU libraries
    step_source: str = "compiled"  # or where the step was loaded from, or why a kept step could not be used

    @functools.cached_property
    def global_flops_per_step(self) -> float | None:
        """FLOPs of one step over the whole global batch, for MFU (see :func:`global_step_flops`)."""
        return global_step_flops(self.config, self.plan)

    @property
    def nets(self) -> models.Networks:
        return self.plan.nets

    @property
    def mesh(self) -> Mesh:
        return self.plan.mesh

    @property
    def abstract_state(self):
        return self.plan.abstract_state

    @property
    def state_from_params(self):
        return self.plan.state_from_params


def global_step_flops(config: ml_collections.ConfigDict, plan: StatePlan) -> float | None:
    """FLOPs of one step over the whole global batch, for MFU; None where XLA cannot count them.

    The compiled program's count is per device, on GPUs it misses the matmuls and convolutions that become
    cuBLAS/cuDNN calls, and on TPUs the Pallas (splash) kernels; so the same step is lowered (not compiled) for one
    CPU device with XLA attention and no remat, whose HLO holds every dot and convolution of the global batch.
    Costs one trace.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.attention_impl, config.model.remat = "xla", False
    nets = models.build(config.model, config.compute_dtype)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    place = lambda t: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), t)  # noqa: E731
    fn = jax.jit(functools.partial(train_step, nets=nets, config=config, tx=plan.tx))
    try:
        return _flops(fn.lower(place(plan.abstract_state), place(batch_spec(config))))
    except Exception:  # noqa: BLE001 - MFU is then not reported
        return None


def batch_spec(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """What the step takes (see ``xpsr_loss``); cached encoder outputs arrive in bfloat16, as stored."""
    b, r = config.global_batch_size, config.data.resolution
    spec = {
        "hr": jax.ShapeDtypeStruct((b, r, r, 3), jnp.float32),
        "lr": jax.ShapeDtypeStruct((b, r, r, 3), jnp.float32),
    }
    if config.loss.get("text", "encoder") == "precomputed":
        width = models.text_config(config.model).hidden_size
        spec["emb_high"] = spec["emb_low"] = jax.ShapeDtypeStruct((b, 77, width), jnp.bfloat16)
    else:
        spec["ids_high"] = spec["ids_low"] = jax.ShapeDtypeStruct((b, 77), jnp.int32)
    if config.loss.latents == "precomputed":
        vae = models.vae_config(config.model)
        h = r // vae.downsample_factor
        spec["latent_moments"] = jax.ShapeDtypeStruct((b, h, h, 2 * vae.latent_channels), jnp.bfloat16)
    return spec


def plan_state(config: ml_collections.ConfigDict, mesh: Mesh) -> StatePlan:
    rules = tuple(tuple(r) for r in config.mesh.logical_axis_rules)
    nets = models.build(config.model, config.compute_dtype)
    tx = make_optimizer(config.optim)
    frozen_dtype = jnp.dtype(config.optim.frozen_dtype)
    boxed = nets.abstract_params(boxed=True)
    mask = partition.trainable_mask(nn.unbox(boxed), config.optim.trainable)

    def build_state(params, rng):
        trainable, frozen = partition.split(params, mask)
        return TrainState(step=jnp.int32(0), trainable=trainable, frozen=cast_floats(frozen, frozen_dtype),
                          opt_state=tx.init(trainable), rng=rng)

    # Boxes survive tree maps, so the optimizer's moments inherit their parameters' logical axes.
    boxed_state = jax.eval_shape(build_state, boxed, jax.random.key(0))
    state_shardings = partition.param_shardings(boxed_state, mesh, rules)
    param_shardings = partition.param_shardings(boxed, mesh, rules)
    abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  nn.unbox(boxed_state), state_shardings)
    state_from_params = jax.jit(build_state, in_shardings=(param_shardings, None), out_shardings=state_shardings)
    return StatePlan(nets, mesh, rules, mask, tx, param_shardings, state_shardings, abstract_state,
                     state_from_params)


def lower_step(config: ml_collections.ConfigDict, plan: StatePlan, batch_shardings: dict | None = None):
    """The train step lowered for ``plan``'s mesh (jitted with the state and batch shardings, donating the state).

    The model's activation constraints (``xpsr_jax.nn.axes``) are flax logical constraints: they resolve only
    under the logical rules and a mesh set with ``jax.set_mesh``; under the older ``with mesh:`` flax sees no
    mesh and drops them without a word."""
    mesh = plan.mesh
    if batch_shardings is None:
        batch_shardings = {k: partition.batch_sharding(mesh, plan.rules, len(v.shape))
                           for k, v in batch_spec(config).items()}
    step = jax.jit(
        functools.partial(train_step, nets=plan.nets, config=config, tx=plan.tx),
        in_shardings=(plan.state_shardings, batch_shardings),
        out_shardings=(plan.state_shardings, NamedSharding(mesh, P())),
        donate_argnums=0,
    )
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_shardings[k])
                      for k, v in batch_spec(config).items()}
    with jax.set_mesh(mesh), nn.logical_axis_rules(plan.rules):
        return step.lower(plan.abstract_state, abstract_batch)


def create_trainer(config: ml_collections.ConfigDict, mesh: Mesh, executable_dir: str | Path | None = None
                   ) -> Trainer:
    """Plan the state and compile the train step ahead of time (its compile time and FLOPs are recorded).

    With ``executable_dir`` the step is first looked up there (:mod:`xpsr_jax.train.executable_cache`): a hit
    is loaded instead of lowered and compiled; a miss compiles and keeps the result there for the next start."""
    plan = plan_state(config, mesh)
    dp = partition.data_parallel_size(mesh, plan.rules)
    accum = config.optim.grad_accum_steps
    if config.global_batch_size % (dp * accum):
        raise ValueError(f"global_batch_size {config.global_batch_size} must divide into {dp} data-parallel "
                         f"shards x {accum} accumulation steps")
    batch_shardings = {k: partition.batch_sharding(mesh, plan.rules, len(v.shape))
                       for k, v in batch_spec(config).items()}
    t0 = time.perf_counter()
    if executable_dir is not None:
        from xpsr_jax.train import executable_cache

        key = executable_cache.step_key(config, mesh)
        found = executable_cache.load(Path(executable_dir), key)
        if found.compiled is not None:
            return Trainer(config, plan, batch_shardings, found.compiled, time.perf_counter() - t0,
                           _flops(found.compiled), found.reason)
    compiled = lower_step(config, plan, batch_shardings).compile()
    compile_seconds = time.perf_counter() - t0
    source = "compiled"
    if executable_dir is not None:
        source = f"compiled ({found.reason}); {executable_cache.store(Path(executable_dir), key, compiled)}"
    return Trainer(config, plan, batch_shardings, compiled, compile_seconds, _flops(compiled), source)


def _flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"]) if cost and "flops" in cost else None
    except Exception:  # noqa: BLE001 - cost analysis is unavailable on some backends; MFU is then not reported
        return None


def load_pretrained(trainer: Trainer, path: str | Path) -> Any:
    """Parameters from an ``xpsr-jax convert`` checkpoint, restored straight into their shardings."""
    from xpsr_jax.weights import checkpoint

    plan = trainer.plan
    shapes = plan.nets.abstract_params(boxed=False)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
                          plan.param_shardings)
    meta, params = checkpoint.load(path, target=target)
    want = trainer.nets.xpsr.config
    have = checkpoint.unet_config(meta)
    if have != want:
        raise ValueError(f"{path} holds a model with config {have}, the run config builds {want}")
    return params

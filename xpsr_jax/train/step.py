"""The train state, the optimizer and the pure train step.

What trains is the whole ControlNet and the UNet's pixel attentions (patterns in the config); everything else is
frozen, stored in ``frozen_dtype`` and has no optimizer state. One call of :func:`train_step` is one optimizer step
over the global batch, split into ``grad_accum_steps`` micro-batches scanned in sequence.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from xpsr_jax.train.loss import LossTerms, xpsr_loss
from xpsr_jax.train.partition import merge


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps done
    trainable: Any  # fp32 master weights of what trains
    frozen: Any  # everything else, in frozen_dtype
    opt_state: Any
    rng: jax.Array  # base key; step k uses fold_in(rng, k), so a resumed run draws what the original drew


def make_optimizer(optim) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; constant learning rate after an optional linear warm-up."""
    lr = learning_rate_schedule(optim)
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip_norm),
        optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay),
    )


def learning_rate_schedule(optim) -> optax.Schedule:
    if optim.warmup_steps > 0:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, optim.learning_rate, optim.warmup_steps),
             optax.constant_schedule(optim.learning_rate)], [optim.warmup_steps])
    return optax.constant_schedule(optim.learning_rate)


def cast_floats(tree: Any, dtype) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, nets, config, tx) -> tuple[TrainState, dict]:
    """-> (new state, metrics). Pure; jit it with shardings and ``donate_argnums=0``."""
    rng = jax.random.fold_in(state.rng, state.step)
    k = config.optim.grad_accum_steps

    def loss_and_grad(trainable, micro, micro_rng):
        def f(p):
            terms = xpsr_loss(nets, merge(p, state.frozen), micro, micro_rng, config.loss)
            return terms.total, terms

        return jax.value_and_grad(f, has_aux=True)(trainable)

    if k == 1:
        (_, terms), grads = loss_and_grad(state.trainable, batch, rng)
    else:
        micro_batches = jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), batch)

        def body(acc, xs):
            micro, i = xs
            (_, terms), g = loss_and_grad(state.trainable, micro, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, acc, (g, terms)), None

        zeros = jax.tree.map(jnp.zeros_like, state.trainable)
        zero_terms = LossTerms(*([jnp.float32(0)] * 4))
        (grads, terms), _ = jax.lax.scan(body, (zeros, zero_terms), (micro_batches, jnp.arange(k)))
        grads = jax.tree.map(lambda g: g / k, grads)
        terms = jax.tree.map(lambda t: t / k, terms)

    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    metrics = {
        "loss": terms.total, "mse": terms.mse, "dfc_rgb": terms.dfc_rgb, "dfc_latent": terms.dfc_latent,
        "grad_norm": optax.tree.norm(grads),
        "lr": learning_rate_schedule(config.optim)(state.step),
    }
    new = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state)
    return new, metrics


"""TPU splash attention (Pallas) for (B, T, N, D) tensors, padded to the kernel's tiles and run per device.

The kernel (``jax.experimental.pallas.ops.tpu.splash_attention``) works on one example at a time, q
(N, Tq, D) and k, v (N, Tk, D), with sequence lengths that its blocks divide (multiples of 128 here) and no
softmax scale of its own. So this wrapper scales q by D**-0.5, moves heads before tokens, pads both lengths up to a
multiple of 128, hides the padded keys with ``SegmentIds`` (real keys get id 0 like every query; padded keys id 1,
which no query has), vmaps the kernel over the batch and cuts the padding off again. Padded query rows attend to
the real keys, so they stay finite; their outputs are dropped, so they receive no gradient.

Under a mesh (``jax.set_mesh``, as the train step is lowered) the call runs inside ``jax.shard_map`` over the mesh
axes that the logical ``batch`` and ``heads`` names map to (flax's logical axis rules): a Mosaic kernel is opaque
to XLA's partitioner, so each device must be handed its own batch shard explicitly. Without a mesh it is called
directly. Head dims that are not multiples of 128 (SD1.5's 40, 80, 160) need no padding here: the kernel tiles
the head dim in lanes of 128 itself.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.sharding import PartitionSpec as P

from xpsr_jax.nn import axes

LANE = 128  # sequence lengths are padded to a multiple of this (the kernel's smallest block with segment ids)
BLOCKS = (512, 256, 128)  # the largest of these dividing the padded length is the kernel's tile


def padded_length(n: int) -> int:
    return -(-n // LANE) * LANE


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, is_causal: bool = False,
                     interpret: bool = False) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v with the splash kernel: q (B, Tq, N, D), k and v (B, Tk, N, D) -> (B, Tq, N, D).

    ``is_causal`` (Tq == Tk): query i sees keys 0..i. ``interpret`` runs the kernel through the Pallas interpreter
    (any backend; slow; for tests on CPU).
    """
    local = functools.partial(_per_device, is_causal=is_causal, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.are_all_axes_manual:
        return local(q, k, v)
    spec = P(_mesh_axes(axes.BATCH, q.shape[0], mesh), None, _mesh_axes(axes.HEADS, q.shape[2], mesh), None)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def _mesh_axes(logical: str, size: int, mesh) -> tuple[str, ...] | None:
    """The mesh axes the logical rules give ``logical``, kept only while their product divides ``size``.

    A batch that does not divide over all data-parallel axes (a single image while sampling on a mesh) is then
    replicated over the rest: every device computes the same rows, which is correct, only not split."""
    named = nn.logical_to_mesh_axes((logical,))[0]
    names = (named,) if isinstance(named, str) else tuple(named or ())
    kept, prod = [], 1
    for name in names:
        if name in mesh.axis_names and size % (prod * mesh.shape[name]) == 0:
            kept.append(name)
            prod *= mesh.shape[name]
    return tuple(kept) or None


def _per_device(q: jax.Array, k: jax.Array, v: jax.Array, is_causal: bool, interpret: bool) -> jax.Array:
    b, tq, n, d = q.shape
    tk = k.shape[1]
    pq, pk = padded_length(tq), padded_length(tk)
    kernel = _kernel(n, pq, pk, is_causal, interpret)
    # The kernel applies no softmax scale. Scaling in fp32 rounds q once (in bf16) instead of also rounding the scale.
    q = (q.astype(jnp.float32) * (1.0 / math.sqrt(d))).astype(q.dtype)

    def heads_first(x, length):  # (b, t, n, d) -> (b, n, length, d), zero-padded tokens
        x = jnp.swapaxes(x, 1, 2)
        return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)))

    segments = None
    if pk != tk:
        segments = sa.SegmentIds(q=jnp.zeros((pq,), jnp.int32), kv=(jnp.arange(pk) >= tk).astype(jnp.int32))
    o = jax.vmap(lambda a, b_, c: kernel(a, b_, c, segment_ids=segments))(
        heads_first(q, pq), heads_first(k, pk), heads_first(v, pk))
    return jnp.swapaxes(o[:, :, :tq, :], 1, 2)


def _block(length: int) -> int:
    return next(b for b in BLOCKS if length % b == 0)


def _kernel(heads: int, q_len: int, kv_len: int, is_causal: bool, interpret: bool):
    """A splash kernel for ``heads`` heads over (q_len, kv_len) scores, full or causal, forward and backward.

    Causal padding needs no extra care: real queries never reach the padded keys that follow the real ones."""
    bq, bkv = _block(q_len), _block(kv_len)
    sizes = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                          block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                          use_fused_bwd_kernel=True)
    one = sa.CausalMask(shape=(q_len, kv_len)) if is_causal else sa.FullMask(_shape=(q_len, kv_len))
    mask = sa.MultiHeadMask([one] * heads)
    return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


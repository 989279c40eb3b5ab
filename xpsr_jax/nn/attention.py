"""Multi-head attention and the one place that chooses the attention kernel.

The kernel is chosen per call, at trace time, from an ``AttentionImpl`` (or just its name):

- ``"auto"``: on TPU, Pallas splash attention (``xpsr_jax.nn.splash``) for the calls it takes, XLA for the rest;
  on GPU, cuDNN flash attention where it accepts the shapes, XLA otherwise; XLA on CPU.
- ``"splash"``: require splash attention wherever the length rule below sends a call to it; a call there that it
  cannot take (integer inputs, unequal heads or head dims, rectangular causal attention) raises, naming the
  shape. The platform is not checked while tracing (parameter shapes are traced on the host, and a TPU program
  may be lowered ahead of time on a CPU host): lowering a splash call for CPU or GPU without ``interpret()``
  fails in Pallas.
- ``"cudnn"``: require cuDNN (it fails if it refuses); ``"xla"``: the portable kernel everywhere.

Which calls go to splash: those whose query *and* key lengths are both at least ``splash_min_length`` (the
config's ``model.splash_min_length``), i.e. the large self-attentions; the rest stay on XLA. For SD1.5 at 512 px
the self-attention lengths are 4096, 1024, 256 and 64 tokens (head dims 40, 80, 160, 160). The XLA path
materialises the (B, N, Tq, Tk) score matrix and its gradient, splash keeps scores in VMEM tiles. Compiled ahead
of time for a v5e chip (forward + backward, bf16, 8 images per chip, 8 heads), the temporaries are: XLA 6144 MiB
vs splash 833 MiB at 4096 tokens (head dim 40), 384 vs 19 MiB at 1024 (head dim 80), nothing either way at 256
(head dim 160); hence the default threshold of 1024.

Cross-attention to the 77 text tokens stays on XLA (77 is far below the threshold). Splash could take it (keys
padded to 128, the padding hidden with segment ids; ``xpsr_jax.nn.splash`` does this and the tests check it), but
compiled the same way (4096 queries, 8 heads of 40, 77 keys) XLA needs 40 MiB of temporaries and splash 444 MiB,
and the padded kernel does 128/77 = 1.7x the score work (XLA's cost model cannot see inside a splash kernel, so
there is no time estimate to weigh against that): a (4096 x 77) score matrix is small, nothing is saved.
``bench/bench_attention_tpu.py`` repeats these compiles (``bench/results/attention-tpu-v5e.jsonl``).

The platform: under ``jax.set_mesh`` (how the train step is lowered, also ahead of time for a TPU topology on a
CPU host) the mesh's devices say it; otherwise the default backend does. Without a mesh, "auto" uses splash only
on a single-device host: XLA cannot partition a Mosaic kernel over devices (see ``_auto_splash_refusal``).

``recording()`` collects, at trace time, which kernel each attention call got (for compile reports);
``interpret()`` makes splash run through the Pallas interpreter so that CPU tests exercise it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from xpsr_jax.nn.attention_policy import DEFAULT_SPLASH_MIN_LENGTH, IMPLS, AttentionImpl  # noqa: F401 - re-exported
from xpsr_jax.nn.layers import Dtype, Linear

@dataclasses.dataclass(frozen=True)
class AttentionCall:
    """One attention call as traced: the kernel it got (``"xla"``, ``"cudnn"`` or ``"splash"``) and its shape."""

    impl: str
    q_len: int
    kv_len: int
    heads: int
    head_dim: int


_LOGS: contextvars.ContextVar[tuple[list, ...]] = contextvars.ContextVar("attention_logs", default=())
_INTERPRET: contextvars.ContextVar[bool] = contextvars.ContextVar("splash_interpret", default=False)


@contextlib.contextmanager
def recording() -> Iterator[list[AttentionCall]]:
    """``with recording() as log: jax.jit(f).lower(...)`` -> one ``AttentionCall`` per attention call traced.

    Only tracing records: a call served from jit's cache adds nothing. Recorders nest; each sees every call."""
    log: list[AttentionCall] = []
    token = _LOGS.set(_LOGS.get() + (log,))
    try:
        yield log
    finally:
        _LOGS.reset(token)


@contextlib.contextmanager
def interpret() -> Iterator[None]:
    """Trace splash attention for the Pallas interpreter: it then runs on CPU (slowly), and counts as available."""
    token = _INTERPRET.set(True)
    try:
        yield
    finally:
        _INTERPRET.reset(token)


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, impl: "str | AttentionImpl" = "auto", is_causal: bool = False
) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v for q (B, Tq, N, D), k and v (B, Tk, N, D) -> (B, Tq, N, D).

    ``is_causal`` lets query i see keys 0..i only (CLIP's text encoder); there is no other mask.
    """
    policy = AttentionImpl.of(impl)
    chosen, out = _dispatch(q, k, v, policy, is_causal)
    call = AttentionCall(chosen, q.shape[1], k.shape[1], q.shape[2], q.shape[3])
    for log in _LOGS.get():
        log.append(call)
    return out


def _dispatch(q, k, v, policy: AttentionImpl, is_causal: bool) -> tuple[str, jax.Array]:
    if policy.impl in ("auto", "splash") and _splash_by_length(q, k, policy):
        reason = _splash_refusal(q, k, v, is_causal)
        if reason is None and policy.impl == "auto":
            reason = _auto_splash_refusal()
        if reason is None:
            from xpsr_jax.nn.splash import splash_attention

            return "splash", splash_attention(q, k, v, is_causal=is_causal, interpret=_INTERPRET.get())
        if policy.impl == "splash":
            raise ValueError(f"splash attention cannot take q {q.shape}, k {k.shape} (B, T, heads, head_dim): "
                             f"{reason}")
    if policy.impl == "cudnn" or (policy.impl == "auto" and _cudnn_may_accept(q)):
        try:
            return "cudnn", jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, implementation="cudnn")
        except Exception:  # noqa: BLE001 - cuDNN's shape/dtype checks raise various types; XLA always works
            if policy.impl == "cudnn":
                raise
    return "xla", jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, implementation="xla")


def _splash_by_length(q, k, policy: AttentionImpl) -> bool:
    return min(q.shape[1], k.shape[1]) >= policy.splash_min_length


def _splash_refusal(q, k, v, is_causal: bool) -> str | None:
    """Why the splash wrapper cannot take this call, or None when it can."""
    if not all(jnp.issubdtype(x.dtype, jnp.floating) for x in (q, k, v)):
        return f"dtypes {q.dtype}, {k.dtype}, {v.dtype} are not all floating point"
    if not q.shape[2] == k.shape[2] == v.shape[2]:
        return "q, k and v must have the same number of heads (grouped-query attention is not wired)"
    if not q.shape[3] == k.shape[3] == v.shape[3]:
        return "q, k and v must have the same head dim"
    if k.shape[:2] != v.shape[:2] or q.shape[0] != k.shape[0]:
        return "batch or key lengths disagree"
    if is_causal and q.shape[1] != k.shape[1]:
        return "causal attention needs as many queries as keys"
    return None


def _auto_splash_refusal() -> str | None:
    """Why "auto" keeps XLA although splash could take the shapes: no TPU, or no mesh on a multi-device host.

    Without a mesh the program's partitioning is unknown at trace time, and XLA cannot partition a Mosaic kernel
    ("Mosaic kernels cannot be automatically partitioned"); a jit over several devices must set its mesh
    (``jax.set_mesh``, with flax's logical axis rules for ``batch``) to get splash attention."""
    if _platform() != "tpu" and not _INTERPRET.get():
        return "not on a TPU"
    if jax.sharding.get_abstract_mesh().empty and jax.device_count() > 1:
        return "no mesh set on a multi-device host"
    return None


def _platform() -> str:
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def _cudnn_may_accept(q: jax.Array) -> bool:
    return _platform() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)


class Attention(nn.Module):
    """diffusers' ``Attention``: to_q/to_k/to_v (bias only where ``qkv_bias``), to_out.0 with bias.

    x (B, T, C) and optional context (B, S, Cc) -> (B, T, C). Without context this is self-attention.
    """

    heads: int
    dim_head: int
    qkv_bias: bool = False
    impl: "str | AttentionImpl" = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        inner = self.heads * self.dim_head
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ctx = x if context is None else context
        q = Linear(inner, use_bias=self.qkv_bias, name="to_q", **kw)(x)
        k = Linear(inner, use_bias=self.qkv_bias, name="to_k", **kw)(ctx)
        v = Linear(inner, use_bias=self.qkv_bias, name="to_v", **kw)(ctx)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, self.dim_head)  # noqa: E731
        o = dot_product_attention(split(q), split(k), split(v), self.impl)
        o = o.reshape(x.shape[0], x.shape[1], inner)
        return Linear(x.shape[-1], name="to_out_0", **kw)(o)

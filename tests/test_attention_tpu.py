"""TPU attention on a CPU host: splash attention through the Pallas interpreter against the XLA path (forward and
gradients, fp32, SD1.5's head dims, padded lengths, causal and cross-attention), the kernel choice and its
recorder, and the sharded tiny train step and sampling call with splash attention against the same with XLA
attention."""

import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xpsr_jax.nn import attention  # noqa: E402
from xpsr_jax.nn.attention import AttentionCall, AttentionImpl, dot_product_attention  # noqa: E402
from xpsr_jax.nn.splash import splash_attention  # noqa: E402

SPLASH_128 = AttentionImpl("splash", splash_min_length=128)


def qkv_and_cotangent(q_len, kv_len, heads, head_dim, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (2, q_len, heads, head_dim), jnp.float32)
    k = jax.random.normal(ks[1], (2, kv_len, heads, head_dim), jnp.float32)
    v = jax.random.normal(ks[2], (2, kv_len, heads, head_dim), jnp.float32)
    return q, k, v, jax.random.normal(ks[3], q.shape, jnp.float32)


def forward_and_grads(attend, q, k, v, cotangent):
    """-> (out, (dq, dk, dv)) of <attend(q, k, v), cotangent>, in one compiled program."""
    def f(q, k, v):
        o = attend(q, k, v)
        return jnp.sum(o * cotangent), o

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def xla(is_causal=False):
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, implementation="xla")


def assert_matches_xla(attend, shape, is_causal=False):
    q, k, v, g = qkv_and_cotangent(*shape)
    with attention.interpret(), attention.recording() as log:
        out, grads = forward_and_grads(attend, q, k, v, g)
    want_out, want_grads = forward_and_grads(xla(is_causal), q, k, v, g)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(("dq", "dk", "dv"), grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
    return log


@pytest.mark.parametrize("length,head_dim", [(256, 40), (128, 80), (128, 160)])
def test_splash_self_attention_matches_xla(length, head_dim):
    """SD1.5's head dims, unpadded: the kernel tiles them into 128 lanes itself."""
    log = assert_matches_xla(lambda q, k, v: dot_product_attention(q, k, v, SPLASH_128), (length, length, 2, head_dim))
    assert log == [AttentionCall("splash", length, length, 2, head_dim)]


def test_splash_cross_attention_pads_77_keys():
    """77 text keys padded to 128; the 51 padded keys are hidden by segment ids (else they would take weight)."""
    assert_matches_xla(lambda q, k, v: splash_attention(q, k, v, interpret=True), (128, 77, 2, 40))


def test_splash_causal_with_padded_length():
    """CLIP's 77-token causal self-attention: both lengths padded to 128, causal mask plus segment ids."""
    policy = AttentionImpl("splash", splash_min_length=64)
    log = assert_matches_xla(lambda q, k, v: dot_product_attention(q, k, v, policy, is_causal=True),
                             (77, 77, 2, 8), is_causal=True)
    assert log == [AttentionCall("splash", 77, 77, 2, 8)]


def test_kernel_choice_by_length_and_platform():
    """Tracing only (eval_shape): which kernel each call gets, as the recorder sees it."""
    q, k, v, _ = qkv_and_cotangent(128, 128, 2, 40)
    text = jnp.zeros((2, 77, 2, 40))
    trace = lambda impl, *a, **kw: jax.eval_shape(  # noqa: E731
        lambda *x: dot_product_attention(*x, impl, **kw), *a)
    with attention.recording() as outer:
        with attention.recording() as log:
            trace(SPLASH_128, q, k, v)  # at the threshold: splash is traced (lowering it on CPU would need interpret)
            trace(AttentionImpl("splash", 256), q, k, v)  # below the threshold: XLA
            trace(SPLASH_128, q, text, text)  # cross-attention to 77 tokens: below the threshold
            trace(AttentionImpl("auto", 128), q, k, v)  # auto on CPU: XLA
            with attention.interpret():  # the interpreter counts as a splash backend, but ...
                trace(AttentionImpl("auto", 128), q, k, v)  # ... a jit over 8 devices without a mesh: XLA
                with jax.set_mesh(jax.make_mesh((8,), ("data",))):
                    trace(AttentionImpl("auto", 128), q, k, v)  # under a mesh: splash, per device
            trace("xla", q, k, v)
        trace("xla", q, text, text)
    assert [c.impl for c in log] == ["splash", "xla", "xla", "xla", "xla", "splash", "xla"]
    assert log[2] == AttentionCall("xla", 128, 77, 2, 40)
    assert outer == log + [AttentionCall("xla", 128, 77, 2, 40)]  # recorders nest


def test_cudnn_is_chosen_by_the_mesh_platform_not_the_host_backend():
    """A GPU program lowered ahead of time on a CPU host (a mesh over compile-only GPU devices) gets cuDNN where a
    GPU host would: the mesh's devices say the platform, as they do for splash on TPU."""
    from jax._src.mesh import AbstractDevice

    q = jnp.zeros((1, 8, 2, 8), jnp.bfloat16)
    assert not attention._cudnn_may_accept(q)  # this CPU host, no mesh
    gpu = jax.sharding.AbstractMesh((1,), ("batch",), abstract_device=AbstractDevice("NVIDIA H200", 132, "gpu"))
    with jax.sharding.use_abstract_mesh(gpu):
        assert attention._cudnn_may_accept(q) and not attention._cudnn_may_accept(q.astype(jnp.float32))


def test_splash_required_refuses_what_it_cannot_take():
    q, k, v, _ = qkv_and_cotangent(128, 256, 2, 40)
    cases = [
        (dict(q=q, k=k, v=v, is_causal=True), "causal attention needs as many queries as keys"),
        (dict(q=q, k=k[:, :, :1], v=v[:, :, :1]), "same number of heads"),
        (dict(q=q, k=k[..., :32], v=v[..., :32]), "same head dim"),
        (dict(q=q.astype(jnp.int32), k=k, v=v), "not all floating point"),
    ]
    for kw, reason in cases:
        with pytest.raises(ValueError, match=reason) as err:
            jax.eval_shape(lambda q, k, v: dot_product_attention(q, k, v, SPLASH_128, kw.get("is_causal", False)),
                           kw["q"], kw["k"], kw["v"])
        assert str(tuple(kw["q"].shape)) in str(err.value)  # the message names the shape
    with pytest.raises(ValueError, match="attention impl must be one of"):
        AttentionImpl("flash")


def test_attention_module_takes_a_policy():
    """``Attention(impl=AttentionImpl(...))``: the policy travels through flax module attributes."""
    module = attention.Attention(heads=2, dim_head=8, impl=AttentionImpl("splash", 64))
    x, ctx = jnp.zeros((1, 64, 16)), jnp.zeros((1, 10, 16))
    with attention.recording() as log:
        params = jax.eval_shape(module.init, jax.random.key(0), x, ctx)
    assert log == [AttentionCall("xla", 64, 10, 2, 8)]
    with attention.recording() as log:
        jax.eval_shape(module.apply, params, x)
    assert log == [AttentionCall("splash", 64, 64, 2, 8)]


# --- the sharded tiny train step -----------------------------------------------------------------------------------
def tiny_step_config(impl):
    from xpsr_jax.configs import tiny

    c = tiny.get_config()
    c.model.unet.layers_per_block = 1
    c.data.resolution = 64  # latents 8x8: the largest self-attention has 64 tokens
    c.mesh.shape = (("data", 4), ("fsdp", 2))
    c.model.attention_impl = impl
    c.model.splash_min_length = 64
    return c


@pytest.mark.tpu
def test_sharded_train_step_with_splash_matches_xla():
    """Loss and every gradient of the tiny step on the 8-device mesh (data 4 x fsdp 2): splash (interpreted) for
    the 64-token self- and cross-attentions, the VAE's mid attention and the text encoder's causal attention, vs XLA.
    """
    from xpsr_jax.train import partition, trainer
    from xpsr_jax.train.loss import xpsr_loss
    from xpsr_jax.train.synthetic import SyntheticIterator

    results, kernels = {}, {}
    for impl in ("xla", "splash"):
        config = tiny_step_config(impl)
        mesh = partition.make_mesh(config.mesh.shape)
        plan = trainer.plan_state(config, mesh)
        if impl == "xla":
            state = plan.state_from_params(plan.nets.fresh_params(0), jax.random.key(1))
            host = next(SyntheticIterator(config.global_batch_size, config.data.resolution, seed=3))
            batch = {key: jax.device_put(a, partition.batch_sharding(mesh, plan.rules, a.ndim))
                     for key, a in host.items()}

        def loss_and_grads(state, batch, nets=plan.nets, config=config):  # the train step's loss, as step.py has it
            rng = jax.random.fold_in(state.rng, state.step)
            f = lambda p: xpsr_loss(nets, partition.merge(p, state.frozen), batch, rng, config.loss).total  # noqa
            return jax.value_and_grad(f)(state.trainable)

        with jax.set_mesh(mesh), nn.logical_axis_rules(plan.rules), attention.interpret(), \
                attention.recording() as log:
            results[impl] = jax.jit(loss_and_grads)(state, batch)
        kernels[impl] = {c.impl for c in log}
    assert kernels == {"xla": {"xla"}, "splash": {"xla", "splash"}}
    (loss, grads), (want_loss, want_grads) = results["splash"], results["xla"]
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    flat, want = jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(want_grads)
    assert len(flat) == len(want) and any(float(jnp.abs(w).max()) > 0 for w in want)
    for (path, got), w in zip(flat, want):
        scale = max(float(jnp.abs(w).max()), 1e-6)
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4 * scale, err_msg=jax.tree_util.keystr(path))


# --- sharded sampling --------------------------------------------------------------------------------------------
@pytest.mark.tpu
def test_sharded_sampling_with_splash_matches_xla(tmp_path):
    """Eight 8x8-latent images in one call sharded over the 8 CPU devices (one per device): the pipeline with
    "auto" attention, which takes splash (interpreted here, as on a TPU) for its 64-token self-attentions (UNet,
    ControlNet, VAE) only when the call runs under the devices' mesh, vs the same pipeline with XLA attention, the
    same weights and noise: the final latents agree to fp32 rounding (measured 1e-5 at values up to 7), the decoded
    images to one uint8 level (a rounding boundary; the AdaIN colour fix after it may stretch that to two)."""
    from xpsr_jax.infer.pipeline import SRPipeline
    from xpsr_jax.infer.settings import SRSettings
    from xpsr_jax.infer.tiny import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", seed=1)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(8)]
    out, kernels = {}, {}
    for impl in ("xla", "auto"):
        pipe = SRPipeline.from_pretrained(ckpt, SRSettings(process_size=64, steps=2, attention_impl=impl,
                                                           splash_min_length=64))
        with attention.interpret(), attention.recording() as log:
            out[impl] = pipe.super_resolve(images, keep_intermediates=True)
        kernels[impl] = {(c.impl, c.q_len, c.kv_len) for c in log}
    assert all(r.tiles["sharded"] and r.tiles["images_in_call"] == 8 for r in out["auto"])
    assert ("splash", 64, 64) in kernels["auto"] and not any(k[0] == "splash" for k in kernels["xla"])
    for got, want in zip(out["auto"], out["xla"]):
        np.testing.assert_allclose(got.extras["latent"], want.extras["latent"], rtol=1e-4, atol=1e-4)
        assert np.abs(got.extras["decoded"].astype(int) - want.extras["decoded"].astype(int)).max() <= 1


# --- ahead-of-time compiles for TPU slices (libtpu, no TPU) ---------------------------------------------------------
LIBTPU_MISSING = "libtpu not installed: TPU compile tests will skip"


def tpu_devices(topology_name):
    """The compile-only devices of a TPU slice (needs libtpu from requirements-tpu.txt, not a TPU)."""
    import importlib.util

    if importlib.util.find_spec("libtpu") is None:
        pytest.skip(LIBTPU_MISSING)
    from jax.experimental import topologies

    return topologies.get_topology_desc(platform="tpu", topology_name=topology_name).devices


@pytest.mark.tpu
@pytest.mark.parametrize("topology_name,hbm_gib", [("v5e:2x2", 15.75), ("v5p:2x2x1", 95.74), ("v6e:2x2", 31.25)])
def test_tiny_train_step_compiles_for_tpu_with_splash(topology_name, hbm_gib):
    """The sharded tiny step (4 chips: data 2 x fsdp 2) compiled for a TPU slice, splash kernels in the program."""
    import time

    from xpsr_jax.train import partition, trainer

    devices = tpu_devices(topology_name)
    config = tiny_step_config("splash")
    config.mesh.shape = (("data", -1), ("fsdp", 2))
    mesh = partition.make_mesh(config.mesh.shape, devices)
    plan = trainer.plan_state(config, mesh)
    t0 = time.perf_counter()
    with attention.recording() as log:
        lowered = trainer.lower_step(config, plan)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
    mib = lambda n: round(n / 2**20, 1)  # noqa: E731
    print(f"\n{topology_name}: lower {t1 - t0:.1f} s, compile {t2 - t1:.1f} s; per chip MiB: arguments "
          f"{mib(mem.argument_size_in_bytes)}, temporaries {mib(mem.temp_size_in_bytes)}, outputs "
          f"{mib(mem.output_size_in_bytes)}, aliased {mib(mem.alias_size_in_bytes)}, peak {mib(peak)}; "
          f"attention calls: {sorted((c.impl, c.q_len, c.kv_len) for c in set(log))}")
    assert {c.impl for c in log} == {"splash", "xla"}
    assert "tpu_custom_call" in compiled.as_text()  # the Mosaic kernels are in the program
    assert 0 < peak < hbm_gib * 2**30
    assert mem.alias_size_in_bytes > 0  # the donated state is updated in place

"""The Flax SD1.5 UNet against diffusers' PyTorch UNet2DConditionModel (diffusers 0.42), same weights, fp32."""

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from helpers import TINY_UNET, nchw, nhwc, randomize_, rel_err, residual_shapes, state_dict_np
from xpsr_jax.models.config import UNetConfig
from xpsr_jax.testing import unet_config as tiny_config
from xpsr_jax.models.unet import UNet
from xpsr_jax.weights.keymap import WeightMismatchError, flax_to_torch, torch_shapes, torch_to_flax
from xpsr_jax.weights.maps import UNET_KEYMAP

def _zeros(*shapes):
    return [np.zeros(s, np.float32) for s in shapes]


TOL = 1e-4  # max|diff| <= 1e-4 * max|y|; fp32 reorderings give ~1e-6


@pytest.fixture(scope="module")
def torch_unet():
    return randomize_(UNet2DConditionModel(**TINY_UNET), seed=1)


@pytest.fixture(scope="module")
def flax_unet(torch_unet):
    model = UNet(tiny_config(**TINY_UNET, pixel_attention=False), attention_impl="xla")
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), *_zeros((1, 16, 16, 4), (1,), (1, 77, 32))))
    params = torch_to_flax(state_dict_np(torch_unet), UNET_KEYMAP, nn.unbox(expected["params"]), "tiny unet")
    return model, params, jax.jit(model.apply)


@pytest.mark.parametrize("size,with_residuals", [((16, 16), True), ((16, 16), False), ((24, 40), True)])
def test_matches_diffusers(torch_unet, flax_unet, size, with_residuals):
    model, params, apply = flax_unet
    rng = np.random.RandomState(0)
    h, w = size
    x = rng.randn(2, 4, h, w).astype(np.float32)
    ctx = rng.randn(2, 77, 32).astype(np.float32)
    t = np.array([999, 3])
    kw, fkw = {}, {}
    if with_residuals:
        shapes, mid_shape = residual_shapes(2, h, w)
        res = [rng.randn(*s).astype(np.float32) * 0.3 for s in shapes]
        mid = rng.randn(*mid_shape).astype(np.float32) * 0.3
        kw = dict(down_block_additional_residuals=[torch.from_numpy(r) for r in res],
                  mid_block_additional_residual=torch.from_numpy(mid))
        fkw = dict(down_residuals=[nhwc(r) for r in res], mid_residual=nhwc(mid))
    with torch.no_grad():
        want = torch_unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx), **kw).sample.numpy()
    got = nchw(apply({"params": params}, nhwc(x), t, ctx, **fkw))
    assert got.shape == want.shape
    assert rel_err(got, want) <= TOL


def test_round_trip_bit_exact(torch_unet, flax_unet):
    sd = state_dict_np(torch_unet)
    back = flax_to_torch(flax_unet[1], UNET_KEYMAP)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def test_sd15_structure_matches_pytorch():
    """Every parameter shape and the total at SD1.5 size, without allocating weights on either side."""
    model = UNet(UNetConfig(pixel_attention=False))
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), *_zeros((1, 8, 8, 4), (1,), (1, 77, 768))))
    ours = torch_shapes(nn.unbox(abstract["params"]), UNET_KEYMAP)
    with torch.device("meta"):
        ref = UNet2DConditionModel(cross_attention_dim=768)  # otherwise diffusers' defaults are SD1.5's
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours == theirs
    assert sum(int(np.prod(s)) for s in ours.values()) == 859_520_964


def test_wrong_shape_and_missing_key_are_named(torch_unet, flax_unet):
    model, params, _ = flax_unet
    expected = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    sd = state_dict_np(torch_unet)
    bad = dict(sd)
    bad["conv_in.weight"] = np.zeros((32, 4, 1, 1), np.float32)
    with pytest.raises(WeightMismatchError, match=r"conv_in\.weight.*\(32, 4, 1, 1\).*\(32, 4, 3, 3\)"):
        torch_to_flax(bad, UNET_KEYMAP, expected, "bad.safetensors")
    missing = {k: v for k, v in sd.items() if k != "mid_block.attentions.0.proj_out.bias"}
    with pytest.raises(WeightMismatchError, match=r"missing keys: 'mid_block\.attentions\.0\.proj_out\.bias'"):
        torch_to_flax(missing, UNET_KEYMAP, expected, "bad.safetensors")
    extra = dict(sd, **{"up_blocks.0.surprise.weight": np.zeros(3, np.float32)})
    with pytest.raises(WeightMismatchError, match=r"unexpected keys: 'up_blocks\.0\.surprise\.weight'"):
        torch_to_flax(extra, UNET_KEYMAP, expected, "bad.safetensors")


def test_pixel_attention_unet_refuses_to_run_without_residuals():
    model = UNet(tiny_config())
    with pytest.raises(ValueError, match="needs the ControlNet's down residuals"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), *_zeros((1, 16, 16, 4), (1,), (1, 77, 32))))


@pytest.mark.slow
def test_sd15_size_forward_matches_diffusers():
    """The real-size UNet (random weights) against diffusers on 8x8 latents; `make test-slow` runs it."""
    torch.manual_seed(0)
    ref = UNet2DConditionModel(cross_attention_dim=768).eval()
    model = UNet(UNetConfig(pixel_attention=False), attention_impl="xla")
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), *_zeros((1, 8, 8, 4), (1,), (1, 77, 768))))
    params = torch_to_flax(state_dict_np(ref), UNET_KEYMAP, nn.unbox(expected["params"]), "sd15 unet")
    rng = np.random.RandomState(0)
    x, ctx = rng.randn(1, 4, 8, 8).astype(np.float32), rng.randn(1, 77, 768).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.tensor([500]), torch.from_numpy(ctx)).sample.numpy()
    got = nchw(jax.jit(model.apply)({"params": params}, nhwc(x), np.array([500]), ctx))
    assert rel_err(got, want) <= TOL

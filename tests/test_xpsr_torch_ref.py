"""The Flax XPSR against ``torch_ref`` (PyTorch, diffusers 0.42 classes, official key names): the ablation variants'
outputs with the same random weights, and the SD1.5 initialisation rules tensor by tensor."""

import jax
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from helpers import TINY_UNET, nchw, nhwc, randomize_, rel_err, state_dict_np
from xpsr_jax import torch_ref
from xpsr_jax.models.config import UNetConfig
from xpsr_jax.testing import unet_config as tiny_config
from xpsr_jax.models.xpsr import XPSR
from xpsr_jax.weights.keymap import flatten, torch_to_flax
from xpsr_jax.weights.maps import CONTROLNET_KEYMAP, UNET_KEYMAP
from xpsr_jax.weights.xpsr_convert import init_from_sd15, official_state_dicts, read_sd15_unet

TOL = 1e-4


def _torch_models(cfg: UNetConfig, seed: int):
    unet, cn = torch_ref.from_configs(cfg.unet_diffusers(), cfg.controlnet_diffusers())
    return randomize_(unet, seed), randomize_(cn, seed + 1)


@pytest.mark.parametrize("variant", [dict(fusion="sequential", pixel_dfc=False),
                                     dict(fusion="high_only", latent_dfc=False, pixel_attention=False)])
def test_ablation_variants_match_torch_ref(variant):
    cfg = tiny_config(**variant)
    t_unet, t_cn = _torch_models(cfg, seed=3)
    model = XPSR(cfg, attention_impl="xla")
    expected = model.abstract_params()
    params = {"unet": torch_to_flax(state_dict_np(t_unet), UNET_KEYMAP, expected["unet"], "unet"),
              "controlnet": torch_to_flax(state_dict_np(t_cn), CONTROLNET_KEYMAP, expected["controlnet"], "cn")}
    rng = np.random.RandomState(0)
    x = rng.randn(2, 4, 16, 16).astype(np.float32)
    t = np.array([500, 20])
    hi, lo = rng.randn(2, 77, 32).astype(np.float32), rng.randn(2, 77, 32).astype(np.float32)
    lr = rng.rand(2, 3, 128, 128).astype(np.float32)
    eps, ctrl = jax.jit(model.denoise)(params, nhwc(x), t, hi, lo, nhwc(lr))
    with torch.no_grad():
        tt = [torch.from_numpy(a) for a in (x, t, hi, lo, lr)]
        out = t_cn(*tt)
        want = t_unet(tt[0], tt[1], tt[2], out.down_residuals, out.mid_residual).numpy()
    assert rel_err(nchw(eps), want) <= TOL
    assert len(ctrl.rgb_dfc) == len(out.rgb_dfc) and len(ctrl.latent_dfc) == len(out.latent_dfc)
    for ours, theirs in zip(ctrl.latent_dfc + ctrl.rgb_dfc, out.latent_dfc + out.rgb_dfc):
        assert rel_err(nchw(ours), theirs.numpy()) <= TOL
    for ours, theirs in zip(ctrl.down_residuals, out.down_residuals):
        assert rel_err(nchw(ours), theirs.numpy()) <= TOL


@pytest.fixture(scope="module")
def sd15_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd15") / "unet"
    randomize_(UNet2DConditionModel(**TINY_UNET), seed=7).save_pretrained(folder)
    return folder


def test_initialisation_rules_tensor_by_tensor(sd15_tiny):
    cfg, sd_unet = read_sd15_unet(sd15_tiny)
    params = init_from_sd15(cfg, sd_unet, seed=0)
    exported = official_state_dicts(params)
    stock = state_dict_np(UNet2DConditionModel.from_pretrained(sd15_tiny))
    counts = {"copy": 0, "zero": 0, "default": 0}
    for sub, rule_of in (("unet", torch_ref.unet_init_source), ("controlnet", torch_ref.controlnet_init_source)):
        for key, value in exported[sub].items():
            rule, src = rule_of(key)
            counts[rule] += 1
            if rule == "copy":
                assert np.array_equal(value, stock[src]), (sub, key)
            elif rule == "zero":
                assert not value.any(), (sub, key)
            else:
                _assert_default_init(key, value)
    assert counts["zero"] > 0 and counts["default"] > 0
    again = official_state_dicts(init_from_sd15(cfg, sd_unet, seed=0))
    other = official_state_dicts(init_from_sd15(cfg, sd_unet, seed=1))
    k = "controlnet_cond_embedding.to_rgbs.0.weight"
    assert np.array_equal(again["controlnet"][k], exported["controlnet"][k])
    assert not np.array_equal(other["controlnet"][k], exported["controlnet"][k])


def _assert_default_init(key: str, value: np.ndarray) -> None:
    """PyTorch's default: norms at (1, 0); Linear/Conv weights and biases in U(+-1/sqrt(fan_in)), not all zero."""
    if value.ndim == 1 and ("norm" in key):
        assert np.all(value == (1.0 if key.endswith("weight") else 0.0)), key
        return
    assert value.any(), key
    assert np.abs(value).max() <= 1.0 + 1e-6, key  # every fan_in >= 1


def test_converted_sd15_unet_keeps_sd15_outputs(sd15_tiny):
    """Initialised XPSR's UNet minus pixel attentions is the SD1.5 UNet: its stock tensors are bit-equal."""
    cfg, sd_unet = read_sd15_unet(sd15_tiny)
    params = init_from_sd15(cfg, sd_unet, seed=0)
    flat_stock, flat_ours = flatten(sd_unet), flatten(params["unet"])
    assert all(np.array_equal(flat_ours[p], v) for p, v in flat_stock.items())
    assert all("pixel_attentions" in "/".join(p) for p in set(flat_ours) - set(flat_stock))

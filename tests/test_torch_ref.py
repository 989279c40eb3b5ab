"""The PyTorch reference (xpsr_jax.torch_ref): faithful to the official outputs, official key sets and counts at SD1.5
size, strict checkpoint IO, the SD1.5 initialisation rules, and the ablation switches."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from xpsr_jax.torch_ref import (
    ConfigError,
    StateDictError,
    XPSRControlNet,
    XPSRUNet,
    controlnet_config_from_unet,
    controlnet_init_source,
    from_configs,
    from_sd15_unet,
    load_official,
    save_official,
    unet_init_source,
)
from xpsr_jax.torch_ref.checkpoint import BIN_NAME, SAFETENSORS_NAME

# the official fixture's shapes (its config.json): two layers per block, unlike xpsr_jax.testing's preset
FIXTURE_UNET = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=2, cross_attention_dim=32,
                    attention_head_dim=8, norm_num_groups=8, sample_size=16)
OUTPUTS = ["eps", "mid_residual"] + [f"down_residual_{i}" for i in range(12)] + \
          [f"latent_dfc_{i}" for i in range(13)] + [f"rgb_dfc_{i}" for i in range(3)]


@pytest.fixture(scope="module")
def checkpoint(official_tiny) -> Path:
    return official_tiny / "checkpoint-0"


@pytest.fixture(scope="module")
def io(official_tiny) -> dict[str, np.ndarray]:
    with np.load(official_tiny / "io.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def official(checkpoint):
    return load_official(checkpoint)


def _run(unet, controlnet, io, e_low="low"):
    t = {k: torch.from_numpy(v) for k, v in io.items()}
    with torch.no_grad():
        out = controlnet(t["latents"], t["timesteps"], t["high"], None if e_low is None else t[e_low], t["lr"])
        eps = unet(t["latents"], t["timesteps"], t["high"], out.down_residuals, out.mid_residual)
    got = {"eps": eps, "mid_residual": out.mid_residual}
    got.update({f"down_residual_{i}": r for i, r in enumerate(out.down_residuals)})
    got.update({f"latent_dfc_{i}": r for i, r in enumerate(out.latent_dfc)})
    got.update({f"rgb_dfc_{i}": r for i, r in enumerate(out.rgb_dfc)})
    return {k: v.numpy() for k, v in got.items()}


def _tiny_stock_unet(seed: int = 0) -> UNet2DConditionModel:
    """A tiny SD1.5-layout UNet whose every tensor is N(0, 1): unlike any default init, so copies are traceable."""
    unet = UNet2DConditionModel(**FIXTURE_UNET)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.state_dict().values():
            p.copy_(torch.randn(p.shape, generator=g))
    return unet


def _keys(model) -> set[str]:
    return set(model.state_dict())


# --- (a) faithful to the official code ---------------------------------------------------------------------------
def test_reproduces_official_outputs(official, io):
    got = _run(*official, io)
    assert set(got) == set(OUTPUTS) and set(OUTPUTS) <= set(io)
    for k in OUTPUTS:
        assert got[k].shape == io[k].shape, k
        err, scale = np.abs(got[k] - io[k]).max(), np.abs(io[k]).max()
        assert err <= 1e-4 * scale, f"{k}: max|d| {err:.3g} vs max|y| {scale:.3g}"


# --- (b) SD1.5 size: official key sets, shapes, counts (meta device, no memory) ----------------------------------
def test_sd15_state_dicts_match_golden(shared_dir, checkpoint):
    golden = json.loads((shared_dir / "reference" / "xpsr-state-dict-shapes.json").read_text())
    with torch.device("meta"):
        unet, controlnet = from_configs(golden["unet_config"], golden["controlnet_config"])
    for name, model, params in (("unet", unet, 1_107_755_524), ("controlnet", controlnet, 620_216_909)):
        want = golden[name]["state_dict"]
        have = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert set(have) == set(want), (name, sorted(set(have) ^ set(want))[:10])
        bad = [k for k in want if have[k] != want[k]]
        assert not bad, (name, bad[:10])
        assert sum(p.numel() for p in model.parameters()) == params == golden[name]["num_params"]
        assert len(have) == golden[name]["num_tensors"]
        # The config written for it has exactly the official field set.
        official_fields = json.loads((checkpoint / name / "config.json").read_text())
        assert set(model.config) == set(official_fields), name


# --- (c) checkpoint IO -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(official, tmp_path_factory) -> Path:
    return save_official(*official, tmp_path_factory.mktemp("saved") / "checkpoint-1")


def test_save_load_round_trip_is_bit_exact(official, saved, checkpoint):
    unet, controlnet = load_official(saved)
    for kind, before, after in (("unet", official[0], unet), ("controlnet", official[1], controlnet)):
        a, b = before.state_dict(), after.state_dict()
        assert list(a) == list(b)
        assert all(torch.equal(a[k], b[k]) and b[k].dtype == torch.float32 for k in a), kind
        # Same tensors and the same config.json as the official folder.
        file = load_file(str(saved / kind / SAFETENSORS_NAME))
        ref = load_file(str(checkpoint / kind / SAFETENSORS_NAME))
        assert set(file) == set(ref) and all(torch.equal(file[k], ref[k]) for k in ref), kind
        written = json.loads((saved / kind / "config.json").read_text())
        assert written == json.loads((checkpoint / kind / "config.json").read_text()), kind


def test_loads_bin_weights(official, saved, tmp_path):
    root = shutil.copytree(saved, tmp_path / "ckpt")
    sd = load_file(str(root / "unet" / SAFETENSORS_NAME))
    torch.save(sd, root / "unet" / BIN_NAME)
    (root / "unet" / SAFETENSORS_NAME).unlink()
    unet, _ = load_official(root)
    assert all(torch.equal(v, sd[k]) for k, v in unet.state_dict().items())


@pytest.mark.parametrize("kind, key, change", [
    ("unet", "up_blocks.2.pixel_attentions.1.transformer_blocks.0.attn2.to_k.weight", "drop"),
    ("controlnet", "down_blocks.1.attentions_connect.0.proj_out.weight", "drop"),
    ("controlnet", "conv_degradation.7.0.weight", "reshape"),
    ("unet", "up_blocks.3.pixel_attentions.2.transformer_blocks.0.attn2.to_v.weight", "reshape"),
    ("controlnet", "down_blocks.0.attentions_extra.0.norm.weight", "add"),
])
def test_strict_loading_names_the_bad_key(saved, tmp_path, kind, key, change):
    root = shutil.copytree(saved, tmp_path / "ckpt")
    path = root / kind / SAFETENSORS_NAME
    sd = load_file(str(path))
    if change == "drop":
        del sd[key]
    elif change == "reshape":
        sd[key] = torch.zeros(sd[key].shape[0], sd[key].shape[1] + 1, *sd[key].shape[2:])
    else:
        sd[key] = torch.zeros(3)
    save_file(sd, str(path))
    words = {"drop": "missing", "reshape": "shape mismatch", "add": "unexpected"}[change]
    with pytest.raises(StateDictError, match=words) as err:
        load_official(root)
    assert key in str(err.value)


def test_config_errors_name_the_field(checkpoint):
    unet_cfg = json.loads((checkpoint / "unet" / "config.json").read_text())
    cn_cfg = json.loads((checkpoint / "controlnet" / "config.json").read_text())
    with torch.device("meta"):
        for cls, cfg, field in (
            (XPSRControlNet, {**cn_cfg, "use_rrdb": True}, "use_rrdb"),
            (XPSRControlNet, {**cn_cfg, "fusion": "sequential", "use_lowlevel_prompt": False}, "use_lowlevel_prompt"),
            (XPSRControlNet, {**cn_cfg, "fusion": "serial"}, "fusion"),
            (XPSRUNet, {**unet_cfg, "mid_use_lowlevel_prompt": True}, "use_lowlevel_prompt"),
            (XPSRUNet, {**unet_cfg, "class_embed_type": "timestep"}, "class_embed_type"),
        ):
            with pytest.raises(ConfigError, match=field):
                cls(cfg)
        with pytest.raises(ConfigError, match="cross_attention_dim"):
            from_configs(unet_cfg, {**cn_cfg, "cross_attention_dim": 64})


# --- (d) initialisation from SD1.5 -------------------------------------------------------------------------------
def _default_init_ok(key: str, t: torch.Tensor, sd: dict[str, torch.Tensor]) -> bool:
    """PyTorch default init: norms (1, 0); Linear / Conv weight and bias U(+-1/sqrt(fan_in)) of the weight."""
    leaf = key.rsplit(".", 2)[-2]
    if leaf.startswith("norm"):
        return torch.equal(t, torch.ones_like(t) if key.endswith("weight") else torch.zeros_like(t))
    w = sd[key[: -len("bias")] + "weight"] if key.endswith("bias") else t
    bound = 1 / math.sqrt(math.prod(w.shape[1:]))
    spread = t.numel() < 64 or t.abs().max() > bound / 2  # a large draw fills the range; a 4-bias may not
    return bool(t.abs().max() <= bound) and bool(spread) and bool(t.any())


@pytest.fixture(scope="module")
def stock_unet() -> UNet2DConditionModel:
    return _tiny_stock_unet()


@pytest.fixture(scope="module")
def initialised(stock_unet):
    before = {k: v.clone() for k, v in stock_unet.state_dict().items()}
    models = from_sd15_unet(stock_unet, seed=3)
    return before, models


def test_init_rules_hold_tensor_by_tensor(stock_unet, initialised):
    before, (unet, controlnet) = initialised
    assert all(torch.equal(v, before[k]) for k, v in stock_unet.state_dict().items()), "the SD1.5 UNet was modified"
    counts = {"copy": 0, "zero": 0, "default": 0}
    for model, rule in ((unet, unet_init_source), (controlnet, controlnet_init_source)):
        sd = model.state_dict()
        for key, t in sd.items():
            how, src = rule(key)
            counts[how] += 1
            if how == "copy":
                assert torch.equal(t, before[src]), key
            elif how == "zero":
                assert not t.any(), key
            else:
                assert _default_init_ok(key, t, sd), key
                namesake = key.replace("attentions_connect", "attentions")
                if namesake in before and before[namesake].shape == t.shape:
                    # Fusion to_k/to_v stay fresh even where the shapes would allow a copy (C == X at level 0 here).
                    assert not torch.equal(t, before[namesake]), key
    assert {k for k in _keys(unet) if unet_init_source(k)[0] == "copy"} == set(before)
    assert len([k for k in _keys(controlnet) if "attentions_connect" in k and "attn2.to_" in k
                and controlnet_init_source(k)[0] == "default"]) == 14  # 7 sites x (to_k, to_v)
    assert counts["zero"] == 2 * 13 + 2  # 13 zero 1x1 convs + cond-embedding conv_out, weight and bias each
    # The ControlNet config is what ControlNetModel.from_unet derives.
    derived = controlnet_config_from_unet(unet.config)
    assert {k: controlnet.config[k] for k in derived} == {k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in derived.items()}


def test_init_is_seeded(stock_unet, initialised):
    _, first = initialised
    again = from_sd15_unet(stock_unet, seed=3)
    other = from_sd15_unet(stock_unet, seed=4)
    for ma, mb, mc in zip(first, again, other):
        sa, sb, sc = ma.state_dict(), mb.state_dict(), mc.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        fresh = [k for k in sa if sa[k].numel() > 1 and not torch.equal(sa[k], sc[k])]
        assert any("pixel_attentions" in k or "conv_degradation" in k for k in fresh)


# --- (e) ablation switches ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_configs(checkpoint):
    return tuple(json.loads((checkpoint / k / "config.json").read_text()) for k in ("unet", "controlnet"))


@pytest.mark.parametrize("fusion", ["parallel", "sequential", "high_only"])
@pytest.mark.parametrize("pixel_dfc, latent_dfc", [(True, True), (False, True), (True, False), (False, False)])
def test_ablation_key_sets(tiny_configs, fusion, pixel_dfc, latent_dfc):
    unet_cfg, _ = tiny_configs
    cfg = controlnet_config_from_unet(unet_cfg, fusion=fusion, pixel_dfc=pixel_dfc, latent_dfc=latent_dfc)
    with torch.device("meta"):
        full = _keys(XPSRControlNet(controlnet_config_from_unet(unet_cfg)))
        keys = _keys(XPSRControlNet(cfg))
        stock = _keys(ControlNetModel(**{k: v for k, v in cfg.items() if k in FIXTURE_UNET or k == "cross_attention_dim"}))
    drop = {"parallel": (), "sequential": ("attentions_connect",), "high_only": ("attentions_connect",
                                                                                "attentions_lowlevel")}[fusion]
    drop += () if pixel_dfc else ("to_rgbs",)
    drop += () if latent_dfc else ("conv_degradation",)
    assert keys == {k: None for k in full if not any(d in k for d in drop)}.keys()
    assert stock <= keys
    assert all(any(s in k for s in ("attentions_lowlevel", "attentions_connect", "to_rgbs", "conv_degradation"))
               for k in keys - stock)
    assert ("attentions_lowlevel" in str(keys)) == (fusion != "high_only")
    if fusion == "high_only" and not (pixel_dfc or latent_dfc):
        assert keys == stock


def test_unet_without_pixel_attention_is_stock(tiny_configs):
    unet_cfg, _ = tiny_configs
    with torch.device("meta"):
        unet = XPSRUNet({**unet_cfg, "pixel_attention": False})
        stock = UNet2DConditionModel(**FIXTURE_UNET)
    assert _keys(unet) == _keys(stock)
    assert unet.config["pixel_attention"] is False


def test_ablation_forwards(official, tiny_configs, io, tmp_path):
    unet, parallel = official
    t = {k: torch.from_numpy(v[:1]) for k, v in io.items() if k in ("latents", "timesteps", "high", "low", "lr")}
    args = (t["latents"], t["timesteps"], t["high"])

    def residuals(model, e_low):
        with torch.no_grad():
            out = model(*args, e_low, t["lr"])
        return out, [*out.down_residuals, out.mid_residual]

    _, ref = residuals(parallel, None)  # the official blocks' behaviour without a low-level prompt
    weights = parallel.state_dict()
    for fusion in ("high_only", "sequential"):
        cfg = controlnet_config_from_unet(tiny_configs[0], fusion=fusion, pixel_dfc=False, latent_dfc=False)
        model = XPSRControlNet(cfg).eval()
        model.load_state_dict({k: v for k, v in weights.items() if k in _keys(model)}, strict=True)
        out, res = residuals(model, t["low"])
        assert out.latent_dfc == [] and out.rgb_dfc == []
        if fusion == "high_only":  # the low-level prompt is ignored
            assert all(torch.equal(a, b) for a, b in zip(res, ref))
        else:  # the low-level attention refines every high-level output; conv_in's residual has none before it
            assert torch.equal(res[0], ref[0])
            assert all((a - b).abs().max() > 1e-3 for a, b in zip(res[1:], ref[1:]))
        # The ablation's config survives a save / load.
        _, reloaded = load_official(save_official(unet, model, tmp_path / fusion))
        assert reloaded.fusion == fusion and reloaded.switches == model.switches


def test_latent_size_not_a_multiple_of_eight(official, io):
    unet, controlnet = official
    t = {k: torch.from_numpy(v) for k, v in io.items()}
    z, lr = torch.randn(1, 4, 12, 20), torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        out = controlnet(z, 500, t["high"][:1], t["low"][:1], lr)
        eps = unet(z, 500, t["high"][:1], out.down_residuals, out.mid_residual)
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    assert [tuple(r.shape[-2:]) for r in out.rgb_dfc] == [(48, 80), (24, 40), (12, 20)]

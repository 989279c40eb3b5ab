"""The Flax XPSR model against outputs of the official PyTorch code, and conversion of its checkpoint layout.

``official-tiny`` was produced by the official XPSR classes (diffusers 0.21.4) with random weights everywhere; our
model reading that checkpoint must reproduce every output group of one denoiser call.
"""

import json
import shutil

import jax
import numpy as np
import pytest

from helpers import nchw, nhwc, rel_err
from xpsr_jax.cli import main as cli
from xpsr_jax.models.config import ConfigError, UNetConfig
from xpsr_jax.models.xpsr import XPSR
from xpsr_jax.weights import checkpoint, io
from xpsr_jax.weights.keymap import WeightMismatchError, torch_shapes
from xpsr_jax.weights.maps import CONTROLNET_KEYMAP, UNET_KEYMAP
from xpsr_jax.weights.xpsr_convert import official_state_dicts, read_official, write_official

TOL = 1e-4  # the official code's own fp32-vs-fp64 spread is ~1e-6


@pytest.fixture(scope="module")
def official(official_tiny):
    cfg, params = read_official(official_tiny / "checkpoint-0")
    return cfg, params, dict(np.load(official_tiny / "io.npz"))


@pytest.fixture(scope="module")
def outputs(official):
    cfg, params, io_ = official
    model = XPSR(cfg, attention_impl="xla")
    eps, ctrl = jax.jit(model.denoise)(params, nhwc(io_["latents"]), io_["timesteps"], io_["high"], io_["low"],
                                       nhwc(io_["lr"]))
    return eps, ctrl


def test_config_read_from_official_json(official):
    cfg = official[0]
    assert cfg.block_out_channels == (32, 64, 64, 64) and cfg.cross_attention_dim == 32
    assert cfg.fusion == "parallel" and cfg.pixel_dfc and cfg.latent_dfc and cfg.pixel_attention


def test_every_output_matches_official_code(official, outputs):
    io_ = official[2]
    eps, ctrl = outputs
    assert rel_err(nchw(eps), io_["eps"]) <= TOL
    assert len(ctrl.down_residuals) == 12 and len(ctrl.latent_dfc) == 13 and len(ctrl.rgb_dfc) == 3
    for i, r in enumerate(ctrl.down_residuals):
        assert rel_err(nchw(r), io_[f"down_residual_{i}"]) <= TOL, i
    assert rel_err(nchw(ctrl.mid_residual), io_["mid_residual"]) <= TOL
    for i, m in enumerate(ctrl.latent_dfc):
        assert rel_err(nchw(m), io_[f"latent_dfc_{i}"]) <= TOL, i
    for i, m in enumerate(ctrl.rgb_dfc):
        assert rel_err(nchw(m), io_[f"rgb_dfc_{i}"]) <= TOL, i


def test_public_denoiser_from_converted_checkpoint(official_tiny, official, outputs, tmp_path):
    from xpsr_jax import XPSRDenoiser

    assert cli(["convert", "from-torch", str(official_tiny / "checkpoint-0"), str(tmp_path / "flax")]) == 0
    den = XPSRDenoiser.from_pretrained(tmp_path / "flax", attention_impl="xla")
    io_ = official[2]
    eps, dfc = den(io_["latents"], io_["timesteps"], io_["high"], io_["low"], io_["lr"])
    assert eps.shape == (2, 4, 16, 16) and eps.dtype == np.float32
    assert rel_err(eps, io_["eps"]) <= TOL
    assert [m.shape for m in dfc["rgb_dfc"]] == [(2, 3, 64, 64), (2, 3, 32, 32), (2, 3, 16, 16)]
    assert rel_err(dfc["latent_dfc"][12], io_["latent_dfc_12"]) <= TOL
    with pytest.raises(ValueError, match=r"lr must be \(B,3,8h,8w\)"):
        den(io_["latents"], io_["timesteps"], io_["high"], io_["low"], io_["lr"][:, :, :64])


def test_torch_flax_torch_is_bit_exact(official_tiny, official, tmp_path):
    cfg, params, _ = official
    write_official(cfg, params, tmp_path / "pt")
    for sub in ("unet", "controlnet"):
        a = io.read_state_dict(official_tiny / f"checkpoint-0/{sub}/diffusion_pytorch_model.safetensors")
        b = io.read_state_dict(tmp_path / f"pt/{sub}/diffusion_pytorch_model.safetensors")
        assert set(a) == set(b)
        for k in a:
            assert b[k].dtype == np.float32 and np.array_equal(a[k], b[k]), k
    conf = json.loads((tmp_path / "pt/controlnet/config.json").read_text())
    assert conf["cross_attention_dim"] == 32 and conf["return_rgbs"] and conf["use_rrdb"] is False
    assert conf["use_lowlevel_prompt"] and conf["use_latent_pred"]
    uconf = json.loads((tmp_path / "pt/unet/config.json").read_text())
    assert uconf["up_use_lowlevel_prompt"] == [False] * 4 and uconf["mid_use_lowlevel_prompt"] is False


def test_flax_torch_flax_is_bit_exact(official, tmp_path):
    cfg, params, _ = official
    write_official(cfg, params, tmp_path / "pt")
    _, again = read_official(tmp_path / "pt")
    flat_a, flat_b = jax.tree.leaves_with_path(params), jax.tree.leaves_with_path(again)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(flat_a, flat_b))


def test_sd15_size_matches_golden_keys_and_counts(shared_dir):
    golden = json.loads((shared_dir / "reference/xpsr-state-dict-shapes.json").read_text())
    abstract = XPSR(UNetConfig()).abstract_params()
    for sub, keymap, count in (("unet", UNET_KEYMAP, 1_107_755_524), ("controlnet", CONTROLNET_KEYMAP, 620_216_909)):
        ours = torch_shapes(abstract[sub], keymap)
        gold = {k: tuple(v) for k, v in golden[sub]["state_dict"].items()}
        assert ours == gold, sub
        assert sum(int(np.prod(s)) for s in ours.values()) == count == golden[sub]["num_params"]


def _copy_checkpoint(src, dst):
    shutil.copytree(src / "checkpoint-0", dst)
    return dst


def test_missing_key_is_named(official_tiny, tmp_path):
    ckpt = _copy_checkpoint(official_tiny, tmp_path / "ckpt")
    f = ckpt / "controlnet" / io.SAFETENSORS
    sd = io.read_state_dict(f)
    del sd["conv_degradation.7.0.bias"]
    io.write_safetensors(sd, f)
    with pytest.raises(WeightMismatchError, match=r"diffusion_pytorch_model\.safetensors.*"
                                                  r"missing keys: 'conv_degradation\.7\.0\.bias'"):
        read_official(ckpt)


def test_wrong_shape_is_named(official_tiny, tmp_path):
    ckpt = _copy_checkpoint(official_tiny, tmp_path / "ckpt")
    f = ckpt / "unet" / io.SAFETENSORS
    sd = io.read_state_dict(f)
    key = "up_blocks.1.pixel_attentions.2.transformer_blocks.0.attn2.to_k.weight"
    sd[key] = np.zeros((64, 65), np.float32)
    io.write_safetensors(sd, f)
    with pytest.raises(WeightMismatchError, match=key.replace(".", r"\.") + r".*\(64, 65\).*\(64, 64\)"):
        read_official(ckpt)


def test_wrong_config_is_named(official_tiny, tmp_path):
    ckpt = _copy_checkpoint(official_tiny, tmp_path / "ckpt")
    conf = json.loads((ckpt / "controlnet/config.json").read_text())
    conf["use_rrdb"] = True
    (ckpt / "controlnet/config.json").write_text(json.dumps(conf))
    with pytest.raises(ConfigError, match="use_rrdb"):
        read_official(ckpt)
    conf["use_rrdb"], conf["cross_attention_dim"] = False, 1280
    (ckpt / "controlnet/config.json").write_text(json.dumps(conf))
    with pytest.raises(ConfigError, match="cross_attention_dim"):
        read_official(ckpt)


def test_corrupt_file_is_named(official_tiny, tmp_path):
    ckpt = _copy_checkpoint(official_tiny, tmp_path / "ckpt")
    f = ckpt / "unet" / io.SAFETENSORS
    f.write_bytes(f.read_bytes()[: 1000])
    with pytest.raises(io.WeightFileError, match=r"unet/diffusion_pytorch_model\.safetensors"):
        read_official(ckpt)


def test_bin_checkpoint_reads_the_same(official_tiny, official, tmp_path):
    import torch

    ckpt = _copy_checkpoint(official_tiny, tmp_path / "ckpt")
    for sub in ("unet", "controlnet"):
        f = ckpt / sub / io.SAFETENSORS
        sd = {k: torch.from_numpy(v) for k, v in io.read_state_dict(f).items()}
        torch.save(sd, ckpt / sub / io.BIN)
        f.unlink()
    _, params = read_official(ckpt)
    ref = official_state_dicts(official[1])
    got = official_state_dicts(params)
    assert all(np.array_equal(got[s][k], ref[s][k]) for s in ref for k in ref[s])


def test_not_a_flax_checkpoint(official_tiny):
    with pytest.raises(checkpoint.CheckpointError, match="convert it with `xpsr-jax convert from-torch`"):
        checkpoint.load(official_tiny / "checkpoint-0")

"""``xpsr-jax convert sd15`` on a tiny diffusers SD1.5 folder, ``to-torch`` back, and the hub path offline."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from helpers import TINY_UNET, randomize_, state_dict_np
from xpsr_jax import torch_ref
from xpsr_jax.cli import main as cli
from xpsr_jax.weights import checkpoint, io
from xpsr_jax.weights.keymap import flatten


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd15")
    randomize_(UNet2DConditionModel(**TINY_UNET), seed=11).save_pretrained(root / "unet")
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    randomize_(vae, seed=12).save_pretrained(root / "vae")
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, vocab_size=49408, max_position_embeddings=77))
    randomize_(text, seed=13).save_pretrained(root / "text_encoder")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def test_convert_sd15_then_to_torch(sd15_folder, tmp_path):
    assert cli(["convert", "sd15", str(sd15_folder), str(tmp_path / "flax"), "--seed", "3"]) == 0
    meta, params = checkpoint.load(tmp_path / "flax")
    assert set(params) == {"unet", "controlnet", "vae", "text_encoder"}
    assert meta["source"] == {"kind": "sd15", "path": str(sd15_folder), "seed": 3}
    assert meta["vae_config"]["block_out_channels"] == [32, 32, 64, 64]
    assert meta["text_encoder_config"]["hidden_size"] == 32

    assert cli(["convert", "to-torch", str(tmp_path / "flax"), str(tmp_path / "pt")]) == 0
    unet, cn = torch_ref.load_official(tmp_path / "pt")  # strict: every key present, shapes equal
    stock = state_dict_np(UNet2DConditionModel.from_pretrained(sd15_folder / "unet"))
    exported = state_dict_np(unet)
    assert all(np.array_equal(exported[k], v) for k, v in stock.items())  # SD1.5 weights kept bit-exactly
    cn_sd = state_dict_np(cn)
    assert not cn_sd["controlnet_mid_block.weight"].any()
    assert np.array_equal(cn_sd["down_blocks.1.attentions_lowlevel.0.proj_in.weight"],
                          stock["down_blocks.1.attentions.0.proj_in.weight"])

    vae_sd = state_dict_np(AutoencoderKL.from_pretrained(sd15_folder / "vae"))
    from xpsr_jax.weights.vae import vae_to_torch_state_dict

    back = vae_to_torch_state_dict(params["vae"])
    assert set(back) == set(vae_sd) and all(np.array_equal(back[k], vae_sd[k]) for k in vae_sd)


def test_convert_refuses_to_overwrite(sd15_folder, tmp_path, capsys):
    (tmp_path / "flax").mkdir()
    assert cli(["convert", "sd15", str(sd15_folder), str(tmp_path / "flax")]) == 2  # before anything is read
    assert "flax already exists; pass --overwrite" in capsys.readouterr().err


def test_missing_component_is_named(sd15_folder, tmp_path):
    import shutil

    broken = tmp_path / "sd"
    shutil.copytree(sd15_folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(io.WeightFileError, match=r"vae"):
        cli(["--traceback", "convert", "sd15", str(broken), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_hub_id_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(io.WeightFileError, match="could not be fetched from the Hugging Face hub.*Offline"):
        io.resolve_model_source("some-org/some-model-that-is-not-cached", ("unet",))


def test_keymap_names_round_trip():
    from xpsr_jax.weights.maps import CONTROLNET_KEYMAP, UNET_KEYMAP

    for key, ndim in [("time_embedding.linear_1.weight", 2), ("conv_degradation.10.0.bias", 1),
                      ("down_blocks.0.attentions_connect.1.transformer_blocks.0.attn2.to_out.0.weight", 2),
                      ("controlnet_cond_embedding.to_rgbs.2.weight", 4), ("mid_block.resnets.1.norm2.weight", 1)]:
        km = CONTROLNET_KEYMAP if "controlnet" in key or "degradation" in key else UNET_KEYMAP
        path = km.flax_path(key, ndim)
        assert km.torch_key(path) == key
    assert UNET_KEYMAP.flax_path("time_embedding.linear_1.weight", 2) == ("time_embedding", "linear_1", "kernel")
    assert CONTROLNET_KEYMAP.flax_path("conv_degradation.10.0.bias", 1) == ("conv_degradation_10_0", "bias")
    assert UNET_KEYMAP.flax_path("mid_block.resnets.1.norm2.weight", 1)[-1] == "scale"
    flat = flatten({"a": {"b": 1}})
    assert flat == {("a", "b"): 1}

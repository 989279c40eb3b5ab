"""The CLIP text encoder against transformers' PyTorch ``CLIPTextModel``: forward parity, SD1.5 structure, key-map
round trips, loading saved folders, and the errors bad checkpoints raise."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel
from transformers.utils import logging as hf_logging

from xpsr_jax.models.clip_text import SD15_TEXT_CONFIG, ClipTextConfig, ClipTextModel, init_shapes
from xpsr_jax.weights.clip_text import (
    CLIP_TEXT_KEYMAP,
    export_clip_text,
    load_clip_text,
    params_from_state_dict,
    save_clip_text,
)
from xpsr_jax.weights.io import WeightFileError
from xpsr_jax.weights.keymap import WeightMismatchError, flatten

# transformers warns that a 1000-token vocabulary cannot hold CLIP's BOS/EOS ids; irrelevant to these models.
hf_logging.set_verbosity_error()

# intermediate 37 (not a multiple of anything) so that a transposed fc kernel cannot pass by accident.
TINY = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77)


def _torch_model(hidden_act: str = "quick_gelu", seed: int = 0) -> CLIPTextModel:
    """A tiny CLIPTextModel whose every parameter (LayerNorms and biases too) is random and non-trivial."""
    torch.manual_seed(seed)
    model = CLIPTextModel(CLIPTextConfig(hidden_act=hidden_act, **TINY)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "layer_norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + 0.2 * torch.randn_like(p))
    return model


def _numpy_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _ids(batch: int = 2, length: int = 77, seed: int = 0) -> np.ndarray:
    """Token ids shaped like SD's: BOS, random tokens of varying length, EOS padding to the end."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, TINY["vocab_size"] - 2, size=(batch, length))
    for row in range(batch):
        n = int(rng.integers(3, length // 2))
        ids[row, 0], ids[row, n:] = TINY["vocab_size"] - 2, TINY["vocab_size"] - 1
    return ids.astype(np.int32)


@pytest.fixture(scope="module")
def torch_model() -> CLIPTextModel:
    return _torch_model()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, torch_model):
    """A diffusers-style model folder whose text_encoder/ was written by ``save_pretrained`` (safetensors)."""
    root = tmp_path_factory.mktemp("sd")
    torch_model.save_pretrained(root / "text_encoder")
    return root


def _torch_forward(model: CLIPTextModel, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids).long()).last_hidden_state.numpy()


def _assert_close(y: np.ndarray, ref: np.ndarray):
    assert y.shape == ref.shape
    err, scale = float(np.abs(y - ref).max()), float(np.abs(ref).max())
    assert err <= 1e-4 * scale, f"max|d|={err:.3g} > 1e-4 * max|y|={scale:.3g}"


# ------------------------------------------------------------------------------------------------ forward parity
@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_forward_matches_transformers(hidden_act):
    model = _torch_model(hidden_act)
    config = ClipTextConfig.from_dict(model.config.to_dict())
    assert config.hidden_act == hidden_act and config.intermediate_size == 37
    params = params_from_state_dict(_numpy_state_dict(model), config)
    apply = jax.jit(ClipTextModel(config, attention_impl="xla").apply)
    for length in (77, 9):  # full SD length, and a shorter sequence (position table sliced)
        ids = _ids(length=length)
        y = np.asarray(apply({"params": params}, ids))
        assert y.shape == (2, length, 32) and y.dtype == np.float32
        _assert_close(y, _torch_forward(model, ids))


def test_attention_is_causal(torch_model):
    """A later token cannot change earlier states (padding after EOS must not leak into the prompt's states)."""
    config = ClipTextConfig(**TINY)
    params = params_from_state_dict(_numpy_state_dict(torch_model), config)
    ids = _ids(batch=1, length=12)
    other = ids.copy()
    other[0, 8:] = 5
    apply = jax.jit(ClipTextModel(config).apply)
    a, b = np.asarray(apply({"params": params}, ids)), np.asarray(apply({"params": params}, other))
    np.testing.assert_allclose(a[:, :8], b[:, :8], rtol=0, atol=1e-6)
    assert not np.allclose(a[:, 8:], b[:, 8:])


def test_bf16_compute_runs_close(torch_model):
    config = ClipTextConfig(**TINY)
    params = params_from_state_dict(_numpy_state_dict(torch_model), config)
    ids = _ids(batch=1, length=16)
    y32 = np.asarray(jax.jit(ClipTextModel(config).apply)({"params": params}, ids))
    y16 = jax.jit(ClipTextModel(config, dtype=jnp.bfloat16).apply)({"params": params}, ids)
    assert y16.dtype == jnp.bfloat16
    assert float(np.abs(np.asarray(y16, np.float32) - y32).max()) < 0.1 * float(np.abs(y32).max())


# ------------------------------------------------------------------------------------------- SD1.5 structure
def _hf_kwargs(config: ClipTextConfig) -> dict:
    d = config.to_dict()
    d.pop("architectures"), d.pop("model_type")
    return d


def test_sd15_structure_matches_pytorch():
    """Every parameter shape of the SD1.5-size model equals the PyTorch model's (built on the meta device)."""
    with torch.device("meta"):
        ref = CLIPTextModel(CLIPTextConfig(**_hf_kwargs(SD15_TEXT_CONFIG)))
    torch_shapes = {
        CLIP_TEXT_KEYMAP.canonical_torch_key(k): tuple(v.shape)
        for k, v in ref.state_dict().items()
        if not CLIP_TEXT_KEYMAP.is_ignored(k)
    }
    shapes = flatten(init_shapes(SD15_TEXT_CONFIG))
    ours = {}
    for path, leaf in shapes.items():
        shape = tuple(leaf.shape)
        ours[CLIP_TEXT_KEYMAP.torch_key(path)] = shape[::-1] if path[-1] == "kernel" else shape
    assert ours == torch_shapes
    assert sum(int(np.prod(s)) for s in ours.values()) == 123_060_480
    assert sum(p.numel() for p in ref.parameters()) == 123_060_480


def test_config_from_sd15_json():
    """The fields of SD1.5's text_encoder/config.json (old token ids, projection_dim, ...) give the default."""
    sd15_json = dict(architectures=["CLIPTextModel"], attention_dropout=0.0, bos_token_id=0, eos_token_id=2,
                     hidden_act="quick_gelu", hidden_size=768, initializer_factor=1.0, initializer_range=0.02,
                     intermediate_size=3072, layer_norm_eps=1e-05, max_position_embeddings=77,
                     model_type="clip_text_model", num_attention_heads=12, num_hidden_layers=12, pad_token_id=1,
                     projection_dim=768, torch_dtype="float32", vocab_size=49408)
    assert ClipTextConfig.from_dict(sd15_json) == SD15_TEXT_CONFIG
    with pytest.raises(ValueError, match="hidden_act"):
        ClipTextConfig(hidden_act="relu6")
    with pytest.raises(ValueError, match="heads"):
        ClipTextConfig(hidden_size=30, num_attention_heads=4)


# --------------------------------------------------------------------------------------------- key-map round trip
def test_round_trip_is_bit_exact(torch_model):
    sd = _numpy_state_dict(torch_model)
    params = params_from_state_dict(sd, ClipTextConfig(**TINY))
    back = export_clip_text(params)
    want = {CLIP_TEXT_KEYMAP.canonical_torch_key(k): v for k, v in sd.items()}
    assert set(back) == set(want)
    assert all(k.startswith("text_model.") for k in back)
    for k, v in want.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def test_flax_layout(torch_model):
    params = params_from_state_dict(_numpy_state_dict(torch_model), ClipTextConfig(**TINY))
    tm = params["text_model"]
    assert tm["encoder"]["layers_1"]["self_attn"]["q_proj"]["kernel"].shape == (32, 32)
    assert tm["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"].shape == (32, 37)
    assert tm["embeddings"]["token_embedding"]["embedding"].shape == (1000, 32)
    assert tm["final_layer_norm"]["scale"].shape == (32,)


# ------------------------------------------------------------------------------------------------- loading files
def test_load_safetensors_folder(folder, torch_model):
    config, params = load_clip_text(folder)
    assert config == ClipTextConfig(**TINY)
    config2, params2 = load_clip_text(folder / "text_encoder")  # the component folder itself
    assert config2 == config
    ids = _ids()
    y = np.asarray(jax.jit(ClipTextModel(config).apply)({"params": params}, ids))
    _assert_close(y, _torch_forward(torch_model, ids))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params, params2)


def test_load_bin_with_prefixed_keys_and_position_ids(tmp_path, torch_model, folder):
    """SD1.5's original layout: pytorch_model.bin with ``text_model.`` keys and the position_ids buffer."""
    sd = {"text_model." + k: v.clone() for k, v in torch_model.state_dict().items()}
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    enc = tmp_path / "text_encoder"
    enc.mkdir()
    torch.save(sd, enc / "pytorch_model.bin")
    (enc / "config.json").write_text((folder / "text_encoder" / "config.json").read_text())
    _, params = load_clip_text(tmp_path)
    _, want = load_clip_text(folder)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params, want)


def test_load_bf16_params(folder):
    _, params = load_clip_text(folder, param_dtype=jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(jnp.bfloat16)}


def test_save_loads_in_transformers(tmp_path, torch_model):
    config = ClipTextConfig(**TINY)
    params = params_from_state_dict(_numpy_state_dict(torch_model), config)
    save_clip_text(tmp_path / "out", config, params)
    reloaded = CLIPTextModel.from_pretrained(tmp_path / "out").eval()
    for k, v in torch_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k


# ------------------------------------------------------------------------------------------------------- errors
def _write_component(root, sd: dict[str, torch.Tensor], config_folder):
    enc = root / "text_encoder"
    enc.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(enc / "model.safetensors"))
    (enc / "config.json").write_text((config_folder / "text_encoder" / "config.json").read_text())
    return enc / "model.safetensors"


def test_missing_key_is_named(tmp_path, torch_model, folder):
    sd = dict(torch_model.state_dict())
    del sd["encoder.layers.1.mlp.fc2.bias"]
    file = _write_component(tmp_path, sd, folder)
    key = r"'text_model\.encoder\.layers\.1\.mlp\.fc2\.bias'"
    with pytest.raises(WeightMismatchError, match="missing keys: " + key) as e:
        load_clip_text(tmp_path)
    assert str(file) in str(e.value)


def test_unexpected_key_is_named(tmp_path, torch_model, folder):
    sd = dict(torch_model.state_dict())
    sd["text_projection.weight"] = torch.zeros(8, 32)
    _write_component(tmp_path, sd, folder)
    with pytest.raises(WeightMismatchError, match=r"unexpected keys: 'text_projection\.weight'"):
        load_clip_text(tmp_path)


def test_wrong_shape_is_named(tmp_path, torch_model, folder):
    sd = dict(torch_model.state_dict())
    sd["encoder.layers.0.mlp.fc1.weight"] = torch.zeros(36, 32)
    _write_component(tmp_path, sd, folder)
    with pytest.raises(WeightMismatchError, match=r"encoder\.layers\.0\.mlp\.fc1\.weight.*\(36, 32\).*\(37, 32\)"):
        load_clip_text(tmp_path)


def test_config_mismatch_is_caught(tmp_path, torch_model, folder):
    """A config.json that disagrees with the weights (one layer too many) fails on the missing layer."""
    file = _write_component(tmp_path, dict(torch_model.state_dict()), folder)
    config = json.loads((file.parent / "config.json").read_text())
    (file.parent / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(WeightMismatchError, match=r"text_model\.encoder\.layers\.2\."):
        load_clip_text(tmp_path)


def test_corrupt_file_is_named(tmp_path, folder):
    enc = tmp_path / "text_encoder"
    enc.mkdir()
    data = (folder / "text_encoder" / "model.safetensors").read_bytes()
    (enc / "model.safetensors").write_bytes(data[: len(data) // 2])
    (enc / "config.json").write_text((folder / "text_encoder" / "config.json").read_text())
    with pytest.raises(WeightFileError, match="model.safetensors"):
        load_clip_text(tmp_path)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(WeightFileError, match="not found"):
        load_clip_text(tmp_path / "nowhere")
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(WeightFileError, match="no weight file"):
        load_clip_text(tmp_path)

"""The VAE against diffusers' PyTorch ``AutoencoderKL``: forward parity, SD1.5 structure, weight import/export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL

from xpsr_jax.models.vae import (
    SD15, AutoencoderKL, DiagonalGaussian, ParamsMismatchError, VAEConfig, abstract_params, decode, encode,
    encode_distribution,
)
from xpsr_jax.weights.vae import (
    VAE_KEYMAP, load_vae, save_vae, vae_to_torch_state_dict, vae_torch_to_flax,
)
from xpsr_jax.weights import io
from xpsr_jax.weights.io import WeightFileError
from xpsr_jax.weights.keymap import WeightMismatchError, flatten

TINY = dict(
    block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8, latent_channels=4,
    sample_size=32,
)


def _rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def torch_vae():
    """Tiny diffusers VAE; convs keep PyTorch's random init, norms (1 / 0 by default) are randomised too."""
    torch.manual_seed(0)
    model = TorchAutoencoderKL(**TINY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def state_dict(torch_vae):
    return {k: v.numpy().copy() for k, v in torch_vae.state_dict().items()}


@pytest.fixture(scope="module")
def config(torch_vae):
    return VAEConfig.from_diffusers(dict(torch_vae.config))


@pytest.fixture(scope="module")
def params(state_dict, config):
    return vae_torch_to_flax(state_dict, config)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, torch_vae):
    """Pipeline-style folders ``<root>/vae`` written by ``save_pretrained`` as safetensors and as .bin."""
    out = {}
    for fmt, safe in (("safetensors", True), ("bin", False)):
        root = tmp_path_factory.mktemp(fmt)
        torch_vae.save_pretrained(root / "vae", safe_serialization=safe)
        out[fmt] = root
    return out


# --- forward parity ------------------------------------------------------------------------------------------------

def test_encoder_matches_diffusers(torch_vae, params, config):
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    mean, logvar = encode_distribution(params, x, config)
    with torch.no_grad():
        post = torch_vae.encode(torch.from_numpy(x)).latent_dist
    assert mean.shape == (2, 4, 16, 16)
    assert _rel_err(mean, post.mean.numpy()) <= 1e-4
    assert _rel_err(logvar, post.logvar.numpy()) <= 1e-4
    np.testing.assert_array_equal(encode(params, x, config), mean)


def test_decoder_matches_diffusers(torch_vae, params, config):
    z = np.random.default_rng(1).standard_normal((2, 4, 16, 16)).astype(np.float32)
    y = decode(params, z, config)
    with torch.no_grad():
        want = torch_vae.decode(torch.from_numpy(z)).sample.numpy()
    assert y.shape == (2, 3, 32, 32)
    assert _rel_err(y, want) <= 1e-4


def test_bf16_compute_and_storage(params, config):
    """dtype sets the compute dtype (outputs in bf16, close to fp32); param_dtype the storage dtype."""
    x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (1, 32, 32, 3)), jnp.float32)
    model = AutoencoderKL(config, attention_impl="xla", dtype=jnp.bfloat16)
    post = jax.jit(lambda p, x: model.apply({"params": p}, x, method=AutoencoderKL.encode))(params, x)
    assert post.mean.dtype == jnp.bfloat16
    ref = encode_distribution(params, np.asarray(x).transpose(0, 3, 1, 2), config)[0].transpose(0, 2, 3, 1)
    assert _rel_err(np.asarray(post.mean, np.float32), ref) < 5e-2
    # abstract_params traces init_params; running init would compile ~100 RNG ops (slow on CPU) for nothing.
    leaves = jax.tree.leaves(abstract_params(config, param_dtype=jnp.bfloat16))
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.bfloat16)}
    loaded = jax.tree.leaves(vae_torch_to_flax(vae_to_torch_state_dict(params), config, param_dtype=jnp.bfloat16))
    assert {leaf.dtype for leaf in loaded} == {jnp.dtype(jnp.bfloat16)}


def test_diagonal_gaussian():
    moments = jnp.asarray(np.random.default_rng(3).standard_normal((2, 4, 4, 8)), jnp.float32)
    moments = moments.at[0, 0, 0, 4].set(50.0).at[0, 0, 0, 5].set(-50.0)
    post = DiagonalGaussian.from_moments(moments)
    np.testing.assert_array_equal(post.mean, moments[..., :4])
    assert float(post.logvar[0, 0, 0, 0]) == 20.0 and float(post.logvar[0, 0, 0, 1]) == -30.0
    rng = jax.random.key(7)
    want = post.mean + jnp.exp(0.5 * post.logvar) * jax.random.normal(rng, post.mean.shape)
    np.testing.assert_allclose(post.sample(rng), want, rtol=1e-6)
    assert post.kl().shape == (2,)


# --- structure -----------------------------------------------------------------------------------------------------

def _torch_layout(path, shape):
    if path[-1] == "kernel":
        return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(reversed(shape))
    return tuple(shape)


def test_sd15_structure_matches_pytorch():
    with torch.device("meta"):
        ref = TorchAutoencoderKL(**SD15.to_diffusers())
    want = {k: tuple(p.shape) for k, p in ref.state_dict().items()}
    got = {VAE_KEYMAP.torch_key(path): _torch_layout(path, leaf.shape)
           for path, leaf in flatten(abstract_params(SD15)).items()}
    assert got == want
    total = sum(int(np.prod(s)) for s in got.values())
    assert total == sum(p.numel() for p in ref.parameters()) == 83_653_863


def test_config_round_trip_through_diffusers(config):
    assert VAEConfig.from_diffusers(TorchAutoencoderKL(**config.to_diffusers()).config) == config
    with pytest.raises(ValueError, match="down_block_types"):
        VAEConfig.from_diffusers({**SD15.to_diffusers(), "down_block_types": ["AttnDownEncoderBlock2D"] * 4})


# --- weights -------------------------------------------------------------------------------------------------------

def test_keymap_round_trip_is_bit_exact(state_dict, params):
    back = vae_to_torch_state_dict(params)
    assert back.keys() == state_dict.keys()
    for k, v in state_dict.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


@pytest.mark.parametrize("as_conv", [False, True], ids=["linear", "conv1x1"])
def test_legacy_attention_spelling_loads(state_dict, params, config, as_conv):
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for k, v in state_dict.items():
        for new, name in legacy.items():
            if ".mid_block.attentions.0." in k and f".{new}." in k:
                k = k.replace(f".{new}.", f".{name}.")
                v = v[:, :, None, None] if as_conv and v.ndim == 2 else v
        old[k] = v
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in old
    got = vae_torch_to_flax(old, config)
    for path, leaf in flatten(params).items():
        np.testing.assert_array_equal(flatten(got)[path], leaf)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_load_saved_pretrained_folder(saved, params, fmt):
    for src in (saved[fmt], saved[fmt] / "vae"):  # pipeline folder or the VAE folder itself
        cfg, got = load_vae(src)
        assert cfg == VAEConfig(**{k: v for k, v in TINY.items() if not k.endswith("_types")})
        assert flatten(got).keys() == flatten(params).keys()
        for path, leaf in flatten(params).items():
            np.testing.assert_array_equal(flatten(got)[path], leaf)


def test_save_vae_loads_in_diffusers(tmp_path, params, config, state_dict):
    save_vae(params, config, tmp_path / "vae")
    back = TorchAutoencoderKL.from_pretrained(tmp_path / "vae").state_dict()
    assert back.keys() == state_dict.keys()
    for k, v in state_dict.items():
        np.testing.assert_array_equal(back[k].numpy(), v)


def _folder_with(tmp_path, config, sd):
    folder = tmp_path / "vae"
    io.write_config(config.to_diffusers(), folder)
    io.write_safetensors(sd, folder / io.SAFETENSORS)
    return folder


def test_missing_key_is_named(tmp_path, state_dict, config):
    sd = {k: v for k, v in state_dict.items() if k != "encoder.mid_block.attentions.0.to_q.weight"}
    folder = _folder_with(tmp_path, config, sd)
    with pytest.raises(WeightMismatchError, match=r"missing keys: 'encoder\.mid_block\.attentions\.0\.to_q\.weight'"
                       ) as e:
        load_vae(folder)
    assert str(folder / io.SAFETENSORS) in str(e.value)


def test_unexpected_key_is_named(tmp_path, state_dict, config):
    sd = {**state_dict, "encoder.extra.weight": np.zeros((4, 4), np.float32)}
    with pytest.raises(WeightMismatchError, match=r"unexpected keys: 'encoder\.extra\.weight'"):
        load_vae(_folder_with(tmp_path, config, sd))


def test_wrong_shape_is_named(tmp_path, state_dict, config):
    sd = {**state_dict, "encoder.conv_in.weight": np.zeros((32, 3, 5, 5), np.float32)}
    with pytest.raises(WeightMismatchError, match=r"shape mismatch for 'encoder\.conv_in\.weight'.*\(32, 3, 5, 5\)"):
        load_vae(_folder_with(tmp_path, config, sd))


def test_corrupt_file_is_named(tmp_path, state_dict, config):
    folder = _folder_with(tmp_path, config, state_dict)
    path = folder / io.SAFETENSORS
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightFileError, match=str(path)):
        load_vae(folder)


def test_params_of_another_config_are_rejected(params):
    # The default config is SD1.5; the tiny parameters must not run (or fail obscurely) under it. The model
    # knows Flax paths, not checkpoint keys.
    with pytest.raises(ParamsMismatchError, match=r"shape mismatch: .*'decoder/conv_in/kernel' has \(3, 3, 4, 64\), "
                                                  r"the config needs \(3, 3, 4, 512\)"):
        encode(params, np.zeros((1, 3, 32, 32), np.float32))


def test_missing_parameter_is_named_by_its_flax_path(params, config):
    encoder = {k: v for k, v in params["encoder"].items() if k != "conv_in"}
    with pytest.raises(ParamsMismatchError, match=r"missing parameters: 'encoder/conv_in/bias', "
                                                  r"'encoder/conv_in/kernel'"):
        decode({**params, "encoder": encoder}, np.zeros((1, 4, 4, 4), np.float32), config)

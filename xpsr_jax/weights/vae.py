"""The VAE's PyTorch <-> Flax key map, its config file, loading from a diffusers folder, and export to PyTorch.

The generic rules of :mod:`xpsr_jax.weights.keymap` map every key; the VAE adds only the legacy spelling of its
mid-block attention (diffusers before 0.14, still in many SD1.5 uploads): ``query``/``key``/``value``/``proj_attn``
for ``to_q``/``to_k``/``to_v``/``to_out.0``. Some converted-from-LDM files also store those four weights as 1x1
convs (O, I, 1, 1); they are squeezed to linear (O, I) on import. Export always writes the current spelling.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from xpsr_jax.models.vae import abstract_params
from xpsr_jax.models.vae_config import VAEConfig
from xpsr_jax.nn.layers import Dtype
from xpsr_jax.weights import io
from xpsr_jax.weights.keymap import KeyMap, check_against, flatten, flax_to_torch, torch_to_flax

SUBFOLDER = "vae"

_ATTN = r"((?:encoder|decoder)\.mid_block\.attentions\.\d+)"

VAE_KEYMAP = KeyMap(
    name="AutoencoderKL",
    legacy_aliases=(
        (_ATTN + r"\.query\.", r"\1.to_q."),
        (_ATTN + r"\.key\.", r"\1.to_k."),
        (_ATTN + r"\.value\.", r"\1.to_v."),
        (_ATTN + r"\.proj_attn\.", r"\1.to_out.0."),
    ),
)

# The attention projections in either spelling, for squeezing 1x1-conv weights.
_ATTN_PROJ_WEIGHT = re.compile(_ATTN + r"\.(query|key|value|proj_attn|to_q|to_k|to_v|to_out\.0)\.weight$")


def _squeeze_conv_projections(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        if value.ndim == 4 and value.shape[2:] == (1, 1) and _ATTN_PROJ_WEIGHT.search(key):
            value = value[:, :, 0, 0]
        out[key] = value
    return out


def vae_torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
    config: VAEConfig,
    param_dtype: Dtype = jnp.float32,
    source: str = "<state dict>",
) -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` state dict (NumPy, either attention spelling) -> Flax params in ``param_dtype``.

    Every parameter of ``config``'s model must be present with its shape and nothing else may be; a
    :class:`WeightMismatchError` names the offending keys and ``source``.
    """
    expected = abstract_params(config)
    tree = torch_to_flax(_squeeze_conv_projections(state_dict), VAE_KEYMAP, expected=expected, source=source)
    return _map_tree(tree, lambda a: jnp.asarray(a, dtype=param_dtype))


def vae_to_torch_state_dict(params: Mapping[str, Any], dtype: Any = None) -> dict[str, np.ndarray]:
    """Flax params -> diffusers ``AutoencoderKL`` state dict of NumPy arrays (current key spelling); ``dtype``
    None keeps each array's dtype, so a fp32 round trip is bit-exact."""
    sd = flax_to_torch(params, VAE_KEYMAP)
    return sd if dtype is None else {k: v.astype(dtype) for k, v in sd.items()}


def read_vae_config(folder: str | os.PathLike) -> VAEConfig:
    """A VAE folder's ``config.json`` -> :class:`VAEConfig`; :class:`WeightFileError` when it is missing, corrupt
    or describes a network this port does not build."""
    raw = io.read_config(folder)
    try:
        return VAEConfig.from_diffusers(raw)
    except (TypeError, ValueError) as e:
        raise io.WeightFileError(f"{Path(folder) / 'config.json'}: not a usable AutoencoderKL config: {e}") from e


def _component_folder(src: str | os.PathLike) -> Path:
    """A pipeline folder (or hub id) with ``vae/``, or the VAE folder itself."""
    root = io.resolve_model_source(src, subfolders=(SUBFOLDER,))
    if (root / SUBFOLDER).is_dir():
        return root / SUBFOLDER
    if (root / "config.json").is_file():
        return root
    raise io.WeightFileError(f"{src}: neither a vae/ subfolder nor a config.json found in {root}")


def load_vae(src: str | os.PathLike, param_dtype: Dtype = jnp.float32) -> tuple[VAEConfig, dict[str, Any]]:
    """Load a diffusers ``AutoencoderKL`` -> (config, Flax params).

    ``src``: a diffusers pipeline folder containing ``vae/``, a VAE folder (``config.json`` and
    ``diffusion_pytorch_model.safetensors`` or ``.bin``), or a hub id (fetched when online). Stored fp16/bf16
    weights are cast to ``param_dtype``. Raises :class:`WeightFileError` for a missing/corrupt file or config and
    :class:`WeightMismatchError` for missing, unexpected or wrongly shaped keys (naming the keys and the file).
    """
    folder = _component_folder(src)
    config = read_vae_config(folder)
    path = io.find_weight_file(folder)
    params = vae_torch_to_flax(io.read_state_dict(path), config, param_dtype, source=str(path))
    return config, params


def save_vae(params: Mapping[str, Any], config: VAEConfig, folder: str | os.PathLike, dtype: Any = np.float32) -> Path:
    """Write a diffusers VAE folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) that
    ``AutoencoderKL.from_pretrained(folder)`` loads. Returns the weight file's path."""
    folder = Path(folder)
    check_against(flatten(params), flatten(abstract_params(config)), VAE_KEYMAP, "save_vae: the parameters")
    sd = vae_to_torch_state_dict(params, dtype)
    io.write_config(config.to_diffusers(), folder)
    path = folder / io.SAFETENSORS
    io.write_safetensors(sd, path)
    return path


def _map_tree(tree: Mapping[str, Any], fn) -> dict[str, Any]:
    return {k: _map_tree(v, fn) if isinstance(v, Mapping) else fn(v) for k, v in tree.items()}

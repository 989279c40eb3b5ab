"""The CLIP text encoder's PyTorch <-> Flax key map, loading from a transformers or diffusers folder, and export.

transformers 5 saves the keys of :class:`~xpsr_jax.models.clip_text.ClipTextModel` without the ``text_model.``
prefix that transformers 4 and SD1.5's ``text_encoder/`` files have; the key map accepts both on import. Exports use
the prefixed spelling, which both transformers 4 and 5 load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from xpsr_jax.models.clip_text import ClipTextConfig, init_shapes
from xpsr_jax.nn.layers import Dtype
from xpsr_jax.weights import io
from xpsr_jax.weights.keymap import KeyMap, flax_to_torch, torch_to_flax

SUBFOLDER = "text_encoder"

CLIP_TEXT_KEYMAP = KeyMap(
    name="CLIPTextModel",
    embeddings=(r"token_embedding\.weight$", r"position_embedding\.weight$"),
    # transformers 5 writes the keys without the ``text_model.`` prefix; transformers 4 and SD1.5 files have it.
    legacy_aliases=((r"^(embeddings|encoder|final_layer_norm)\.", r"text_model.\1."),),
    # A buffer (arange(77)) that older transformers saved with the weights.
    ignored=(r"(^|\.)position_ids$",),
)


def params_from_state_dict(
    state_dict: Mapping[str, np.ndarray],
    config: ClipTextConfig,
    param_dtype: Dtype = jnp.float32,
    source: str = "<state dict>",
) -> dict[str, Any]:
    """A PyTorch ``CLIPTextModel`` state dict (NumPy arrays) -> Flax params (NumPy, ``param_dtype``).

    Every parameter of ``config``'s model must be present with its shape, and nothing else (buffers aside);
    :class:`~xpsr_jax.weights.keymap.WeightMismatchError` names the offending keys and ``source`` otherwise.
    """
    params = torch_to_flax(state_dict, CLIP_TEXT_KEYMAP, expected=init_shapes(config, param_dtype), source=source)
    return jax.tree.map(lambda a: np.asarray(a).astype(param_dtype, copy=False), params)


def load_clip_text(
    src: str | os.PathLike, param_dtype: Dtype = jnp.float32
) -> tuple[ClipTextConfig, dict[str, Any]]:
    """A diffusers model folder (its ``text_encoder/``), a text-encoder folder itself, or a hub id when online ->
    ``(config, params)``; params are NumPy arrays in ``param_dtype``, ready for ``ClipTextModel(config).apply``.

    Reads ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``); keys and shapes are checked
    against the model the config describes. Raises :class:`~xpsr_jax.weights.io.WeightFileError` for a missing
    or corrupt file, :class:`~xpsr_jax.weights.keymap.WeightMismatchError` for weights that do not fit.
    """
    root = io.resolve_model_source(src, (SUBFOLDER,))
    folder = root / SUBFOLDER if (root / SUBFOLDER).is_dir() else root
    config = ClipTextConfig.from_dict(io.read_config(folder))
    weight_file = io.find_weight_file(folder)
    state_dict = io.read_state_dict(weight_file)
    return config, params_from_state_dict(state_dict, config, param_dtype, source=str(weight_file))


def export_clip_text(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax params -> a PyTorch ``CLIPTextModel`` state dict (``text_model.*`` keys, dtypes kept)."""
    return flax_to_torch(jax.device_get(params), CLIP_TEXT_KEYMAP)


def save_clip_text(folder: str | os.PathLike, config: ClipTextConfig, params: Mapping[str, Any]) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``CLIPTextModel.from_pretrained(folder)`` loads."""
    folder = Path(folder)
    io.write_config(config.to_dict(), folder)
    io.write_safetensors(export_clip_text(params), folder / io.TRANSFORMERS_SAFETENSORS)
    return folder

"""Reading and writing PyTorch-format weight files and diffusers-style folders.

Files are read into NumPy without importing torch where possible (safetensors); ``.bin`` pickles need torch and are
opened with ``weights_only=True``. A hub id is resolved with huggingface_hub when the machine is online.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
from xpsr_jax.errors import XPSRError

SAFETENSORS = "diffusion_pytorch_model.safetensors"
BIN = "diffusion_pytorch_model.bin"
# transformers' names for the text encoder.
TRANSFORMERS_SAFETENSORS = "model.safetensors"
TRANSFORMERS_BIN = "pytorch_model.bin"


class WeightFileError(XPSRError, OSError):
    """A weight file or folder is missing, unreadable or corrupt; the message names it."""


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """One ``.safetensors`` or ``.bin`` file -> {key: NumPy array} (dtype as stored; bf16 via ml_dtypes)."""
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return _read_safetensors(path)
        if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
            return _read_torch_pickle(path)
    except WeightFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure means the file is corrupt; say which
        raise WeightFileError(f"cannot read weights from {path}: {type(e).__name__}: {e}") from e
    raise WeightFileError(f"unknown weight file type {path.suffix!r}: {path} (want .safetensors or .bin)")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            out[key] = f.get_tensor(key)
    return out


def _read_torch_pickle(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise WeightFileError(f"{path} is a PyTorch pickle; reading it needs torch installed") from e
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    out = {}
    for key, t in sd.items():
        if not hasattr(t, "detach"):
            continue
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            out[key] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[key] = t.numpy()
    return out


def write_safetensors(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike, metadata=None) -> None:
    """Atomic write: a crash leaves either the old file or the new one, never half a file."""
    from safetensors.numpy import save_file

    from xpsr_jax.files import atomic_target

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(tmp), metadata=metadata)


def find_weight_file(folder: str | os.PathLike) -> Path:
    """The weight file of a diffusers / transformers component folder (safetensors preferred)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightFileError(f"component folder not found: {folder}")
    for name in (SAFETENSORS, TRANSFORMERS_SAFETENSORS, BIN, TRANSFORMERS_BIN):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir())
    raise WeightFileError(
        f"no weight file in {folder}: expected one of {SAFETENSORS}, {TRANSFORMERS_SAFETENSORS}, {BIN}, "
        f"{TRANSFORMERS_BIN}; found {found}"
    )


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise WeightFileError(f"config.json not found in {folder}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WeightFileError(f"corrupt config {path}: {e}") from e


def write_config(config: Mapping, folder: str | os.PathLike) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from xpsr_jax.files import atomic_write_json

    atomic_write_json(folder / "config.json", dict(config), sort_keys=True)


def resolve_model_source(src: str | os.PathLike, subfolders: tuple[str, ...] = ()) -> Path:
    """A local folder, or a hub id downloaded (only the needed subfolders) when online.

    Offline, a hub id that is not in the local cache fails with a message saying so and how to fix it.
    """
    local = Path(src)
    if local.exists():
        if not local.is_dir():
            raise WeightFileError(f"{src} is a file; expected a diffusers-style model folder")
        return local
    if str(src).count("/") != 1 or str(src).startswith((".", "/")):
        raise WeightFileError(f"model folder not found: {src}")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["model_index.json"] + [f"{s}/*" for s in subfolders] if subfolders else None
        return Path(snapshot_download(str(src), allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - offline, unknown id, auth: all end here with the same advice
        raise WeightFileError(
            f"{src!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}: {e}). Offline, download the model elsewhere and pass its folder."
        ) from e

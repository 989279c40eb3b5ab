"""Official XPSR checkpoint folders: ``{unet,controlnet}/{config.json, diffusion_pytorch_model.safetensors|.bin}``.

Loading is strict: every key the config implies must be in the file with its exact shape, and nothing else may
be (the official loader tolerates extra keys; a reference must not, or a wrong exporter would pass unnoticed).
Models are built on the meta device and take the file's tensors directly, so loading an SD1.5-size checkpoint
costs no random initialisation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from xpsr_jax.torch_ref import config as C
from xpsr_jax.torch_ref.models import XPSRControlNet, XPSRUNet
from xpsr_jax.errors import XPSRError
from xpsr_jax.files import atomic_target, atomic_write_json

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
BIN_NAME = "diffusion_pytorch_model.bin"
_CLASSES = {"unet": (XPSRUNet, "UNet2DConditionModel"), "controlnet": (XPSRControlNet, "ControlNetModel")}


class StateDictError(XPSRError, ValueError):
    """A weight file does not fit the model its config describes; the message names the offending keys."""


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise :class:`StateDictError` naming every missing / unexpected key and every shape mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = sorted(k for k in state_dict if k not in expected)
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {s}"
              for k, s in expected.items() if k in state_dict and tuple(state_dict[k].shape) != s]
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_listing(shapes)}")
    if problems:
        raise StateDictError(f"{source}: " + "; ".join(problems))


def load_model(folder: str | os.PathLike, kind: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """One ``unet`` / ``controlnet`` folder -> its model (eval mode, ``dtype``, CPU)."""
    cls, class_name = _CLASSES[kind]
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}")
    config = json.loads(config_path.read_text())
    if config.get("_class_name", class_name) != class_name:
        raise C.ConfigError(f"{config_path}: _class_name {config['_class_name']!r}, expected {class_name!r}")
    weights = _weights_file(folder)
    state_dict = _read(weights)
    with torch.device("meta"):
        model = cls(config)
    check_state_dict(model, state_dict, str(weights))
    state_dict = {k: v.to(dtype).contiguous() for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    _check_materialised(model, str(weights))
    return model.eval()


def load_official(checkpoint_dir: str | os.PathLike,
                  dtype: torch.dtype = torch.float32) -> tuple[XPSRUNet, XPSRControlNet]:
    """``checkpoint_dir/{unet,controlnet}`` (an official ``checkpoint-N`` or a :func:`save_official` folder) ->
    (unet, controlnet), strictly loaded, in eval mode."""
    root = Path(checkpoint_dir)
    unet = load_model(root / "unet", "unet", dtype)
    controlnet = load_model(root / "controlnet", "controlnet", dtype)
    C.check_pair(unet.config, controlnet.config)
    return unet, controlnet


def save_official(unet: XPSRUNet, controlnet: XPSRControlNet, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/{unet,controlnet}/{config.json, diffusion_pytorch_model.safetensors}`` (fp32), the layout
    the official ``from_pretrained(path, subfolder=...)`` reads. -> out_dir."""
    root = Path(out_dir)
    for kind, model in (("unet", unet), ("controlnet", controlnet)):
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
        with atomic_target(folder / SAFETENSORS_NAME) as tmp:  # each file appears whole or not at all
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        atomic_write_json(folder / CONFIG_NAME, dict(model.config), sort_keys=True)
    return root


def _weights_file(folder: Path) -> Path:
    for name in (SAFETENSORS_NAME, BIN_NAME):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"neither {SAFETENSORS_NAME} nor {BIN_NAME} in {folder}")


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _check_materialised(model: nn.Module, source: str) -> None:
    # A tensor left on the meta device would be one the file could not provide (e.g. a non-persistent buffer).
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise StateDictError(f"{source}: not provided by the file: {_listing(left)}")


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

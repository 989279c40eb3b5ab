"""XPSR weights between PyTorch and Flax: the official checkpoint layout both ways, and initialisation from SD1.5.

* ``read_official(ckpt)``: ``ckpt/{unet,controlnet}/{config.json, diffusion_pytorch_model.safetensors|.bin}`` ->
  (config, params), every key and shape checked against the Flax model.
* ``write_official(config, params, out)``: the same layout, fp32, every key of the official state dicts.
* ``init_from_sd15(config, sd15_unet_params, seed)``: XPSR's initialisation rules (reference §2.6).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from xpsr_jax.models.config import UNetConfig
from xpsr_jax.models.unet import UNet
from xpsr_jax.models.xpsr import XPSR
from xpsr_jax.weights import io
from xpsr_jax.weights.keymap import flax_to_torch, torch_to_flax
from xpsr_jax.weights.maps import CONTROLNET_KEYMAP, UNET_KEYMAP


def read_official(ckpt: str | Path) -> tuple[UNetConfig, dict[str, Any]]:
    ckpt = Path(ckpt)
    for sub in ("unet", "controlnet"):
        if not (ckpt / sub).is_dir():
            raise io.WeightFileError(f"{ckpt} is not an XPSR checkpoint: no {sub}/ folder")
    cfg = UNetConfig.from_diffusers(io.read_config(ckpt / "unet"), io.read_config(ckpt / "controlnet"),
                                    source=str(ckpt / "unet" / "config.json"))
    expected = XPSR(cfg).abstract_params()
    params = {}
    for sub, keymap in (("unet", UNET_KEYMAP), ("controlnet", CONTROLNET_KEYMAP)):
        f = io.find_weight_file(ckpt / sub)
        params[sub] = torch_to_flax(io.read_state_dict(f), keymap, expected[sub], source=str(f))
    return cfg, params


def official_state_dicts(params: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Flax params -> {"unet": state dict, "controlnet": state dict} in fp32, official key names."""
    out = {}
    for sub, keymap in (("unet", UNET_KEYMAP), ("controlnet", CONTROLNET_KEYMAP)):
        sd = flax_to_torch(params[sub], keymap)
        out[sub] = {k: np.asarray(v, np.float32) for k, v in sd.items()}
    return out


def write_official(cfg: UNetConfig, params: Mapping[str, Any], out: str | Path) -> Path:
    out = Path(out)
    sds = official_state_dicts(params)
    for sub, conf in (("unet", cfg.unet_diffusers()), ("controlnet", cfg.controlnet_diffusers())):
        io.write_safetensors(sds[sub], out / sub / io.SAFETENSORS, metadata={"format": "pt"})
        io.write_config(conf, out / sub)
    return out


def read_sd15_unet(folder: str | Path, cfg_overrides: Mapping[str, Any] | None = None
                   ) -> tuple[UNetConfig, dict[str, Any]]:
    """A stock diffusers SD1.5 ``unet/`` folder -> (XPSR config, stock UNet params)."""
    folder = Path(folder)
    cfg = UNetConfig.from_diffusers(io.read_config(folder), source=str(folder / "config.json"))
    cfg = cfg.replace(**(cfg_overrides or {}))
    stock = UNet(cfg.replace(pixel_attention=False))
    x = XPSR(cfg).example_inputs()
    expected = jax.eval_shape(lambda: stock.init(jax.random.key(0), x["sample"], x["timesteps"], x["e_high"]))
    f = io.find_weight_file(folder)
    import flax.linen as nn

    params = torch_to_flax(io.read_state_dict(f), UNET_KEYMAP, nn.unbox(expected["params"]), source=str(f))
    return cfg, params


def init_from_sd15(cfg: UNetConfig, sd15_unet: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
    """XPSR's initialisation from a stock SD1.5 UNet's parameters (reference §2.6):

    UNet: SD1.5 weights, new ``pixel_attentions`` PyTorch-default init. ControlNet: conv_in, time embedding, down
    and mid blocks copied from the UNet; ``attentions_lowlevel`` full copies of the co-located ``attentions``;
    ``attentions_connect`` copies except ``attn2.to_k``/``to_v`` (their shapes differ); zero convs and the
    conditioning embedding's conv_out zero; everything else (conditioning embedding, ``to_rgbs``,
    ``conv_degradation*``) PyTorch-default init. ``seed`` makes the fresh parts repeatable.
    """
    fresh = XPSR(cfg).fresh_params(seed)
    unet = copy.deepcopy(fresh["unet"])
    _overwrite(unet, sd15_unet, "unet")
    cn = copy.deepcopy(fresh["controlnet"])
    for name in ("conv_in", "time_embedding"):
        cn[name] = copy.deepcopy(sd15_unet[name])
    blocks = [k for k in sd15_unet if k.startswith("down_blocks_")] + ["mid_block"]
    for block in blocks:
        src, dst = sd15_unet[block], cn[block]
        for name, sub in src.items():
            dst[name] = copy.deepcopy(sub)
            if name.startswith("attentions_"):
                j = name.split("_")[-1]
                if f"attentions_lowlevel_{j}" in dst:
                    dst[f"attentions_lowlevel_{j}"] = copy.deepcopy(sub)
                if f"attentions_connect_{j}" in dst:
                    connect = dst[f"attentions_connect_{j}"]
                    fresh_attn2 = connect["transformer_blocks_0"]["attn2"]
                    keep = {k: fresh_attn2[k] for k in ("to_k", "to_v")}
                    connect = copy.deepcopy(sub)
                    connect["transformer_blocks_0"]["attn2"].update(keep)
                    dst[f"attentions_connect_{j}"] = connect
    return {"unet": unet, "controlnet": cn}


def _overwrite(dst: dict, src: Mapping[str, Any], where: str) -> None:
    for k, v in src.items():
        if k not in dst:
            raise KeyError(f"{where}/{k} of the SD1.5 UNet has no place in the XPSR model")
        if isinstance(v, Mapping):
            _overwrite(dst[k], v, f"{where}/{k}")
        else:
            if np.shape(dst[k]) != np.shape(v):
                raise ValueError(f"{where}/{k}: SD1.5 shape {np.shape(v)} vs XPSR {np.shape(dst[k])}")
            dst[k] = np.asarray(v)

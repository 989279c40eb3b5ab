"""The Flax XPSR checkpoint folder that ``xpsr-jax convert`` writes and everything else reads.

Layout::

    OUT/xpsr.json     what the folder holds: format version, the UNet/ControlNet config (diffusers fields plus
                      XPSR switches), the VAE and text-encoder configs when present, where it came from
    OUT/params/       an orbax checkpoint of {"unet": ..., "controlnet": ..., "vae": ..., "text_encoder": ...}
    OUT/tokenizer/    the CLIP vocabulary (vocab.json, merges.txt) when the source had one

Written to ``OUT.tmp`` and renamed at the end, so a killed conversion never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from xpsr_jax import paths
from xpsr_jax.models.config import UNetConfig
from xpsr_jax.errors import XPSRError
from xpsr_jax.files import atomic_write_json

FORMAT = "xpsr-jax-flax/1"
META = "xpsr.json"


class CheckpointError(XPSRError, OSError):
    """A Flax checkpoint folder is missing, incomplete or of another format; the message names it."""


def save(out: str | Path, params: Mapping[str, Any], meta: Mapping[str, Any], tokenizer_dir: Path | None = None,
         overwrite: bool = False) -> Path:
    import orbax.checkpoint as ocp

    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} exists; pass overwrite to replace it")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tree = jax.tree.map(np.asarray, dict(params))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / "params", tree)
        ckptr.wait_until_finished()
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
    full = {"format": FORMAT, "components": sorted(params), **meta}
    atomic_write_json(tmp / META, full, sort_keys=True, default=_jsonable)  # strict: a NaN in a config is named
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def read_meta(path: str | Path) -> dict:
    path = paths.as_path(path)  # local or gs://
    meta_file = path / META
    if not meta_file.is_file():
        hint = ""
        if (path / "unet").is_dir() or (path / "controlnet").is_dir():
            hint = " (this looks like a PyTorch checkpoint: convert it with `xpsr-jax convert from-torch`)"
        raise CheckpointError(f"{path} is not an xpsr-jax Flax checkpoint: no {META}{hint}")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt {meta_file}: {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file}: format {meta.get('format')!r}, this version reads {FORMAT!r}")
    return meta


def load(path: str | Path, components: tuple[str, ...] | None = None, target: Mapping[str, Any] | None = None
         ) -> tuple[dict, dict]:
    """-> (meta, params). ``components`` restricts what is returned (e.g. ("unet", "controlnet")).

    ``target``: ``jax.ShapeDtypeStruct`` trees (with shardings) per component, to restore arrays straight onto
    devices in their final layout and dtype; components without a target come back as host arrays.
    """
    import orbax.checkpoint as ocp

    path = paths.absolute(path)  # local or gs:// (orbax reads buckets through TensorStore)
    meta = read_meta(path)
    have = set(meta.get("components", []))
    want = tuple(components) if components is not None else tuple(sorted(target or have))
    missing = [c for c in want if c not in have]
    if missing:
        raise CheckpointError(f"{path} has no {missing} (it holds {sorted(have)})")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            item_meta = ckptr.metadata(path / "params")
            tree_meta = getattr(item_meta, "item_metadata", item_meta)
            # the whole tree is restored (orbax's partial-restore API differs between versions); the VAE and text
            # encoder are small next to the UNet and ControlNet.
            abstract = jax.tree.map(_abstract, dict(tree_meta))
            for c, t in (target or {}).items():
                _check_target(path, c, abstract.get(c), t)
                abstract[c] = t
            restored = ckptr.restore(path / "params", abstract)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any orbax failure here means the folder is damaged
        raise CheckpointError(f"cannot restore parameters from {path / 'params'}: {type(e).__name__}: {e}") from e
    return meta, {c: restored[c] for c in want}


def unet_config(meta: Mapping[str, Any]) -> UNetConfig:
    cfg = dict(meta["unet_config"])
    for k in ("block_out_channels", "down_block_types", "up_block_types", "conditioning_embedding_out_channels"):
        cfg[k] = tuple(cfg[k])
    return UNetConfig(**cfg)


def _abstract(m):
    return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype)


def _check_target(path: Path, component: str, stored, target) -> None:
    if stored is None:
        raise CheckpointError(f"{path} has no {component!r} parameters")
    from xpsr_jax.weights.keymap import flatten

    a, b = flatten(stored), flatten(target)
    if set(a) != set(b):
        diff = sorted("/".join(p) for p in set(a) ^ set(b))[:5]
        raise CheckpointError(f"{path}: {component} parameters differ from the model's, e.g. {diff}")
    for p in a:
        if tuple(a[p].shape) != tuple(b[p].shape):
            raise CheckpointError(f"{path}: {component}/{'/'.join(p)} has shape {a[p].shape}, "
                                  f"the model needs {b[p].shape}")


def _jsonable(o):
    if isinstance(o, tuple):
        return list(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")

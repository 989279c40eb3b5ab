"""Declarative PyTorch <-> Flax parameter maps.

Our Flax modules keep diffusers' / transformers' module names, so a PyTorch key and a Flax path differ only by a
fixed set of rules, which this module states once:

* a numeric key part is an index and joins its list name with ``_``:
  ``down_blocks.0.attentions.1.to_out.0.weight`` <-> ``down_blocks_0/attentions_1/to_out_0/kernel``;
* the leaf: ``weight`` of a 4-D conv (O, I, kh, kw) <-> ``kernel`` (kh, kw, I, O); of a 2-D linear (O, I) <->
  ``kernel`` (I, O); of a 1-D norm <-> ``scale``; of an embedding table <-> ``embedding`` (unchanged); ``bias`` <->
  ``bias``.

A model's :class:`KeyMap` adds only what the rules cannot know: which tables are embeddings, names that end in
``_<digit>`` without being list items (``linear_1``), legacy key spellings accepted on import, and buffers that
checkpoints carry but that are not parameters. Every transform is a transpose, so round trips are bit-exact.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping

import numpy as np
from xpsr_jax.errors import XPSRError

Path = tuple[str, ...]


class WeightMismatchError(XPSRError, ValueError):
    """A checkpoint does not fit the model: the message names the source, the key and the shapes."""


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """What one model adds to the generic rules (see the module docstring)."""

    name: str
    embeddings: tuple[str, ...] = ()  # regexes of PyTorch keys that are embedding tables
    literal_names: tuple[str, ...] = ()  # Flax names with a ``_<digit>`` suffix that is not an index
    legacy_aliases: tuple[tuple[str, str], ...] = ()  # (regex, replacement) applied to PyTorch keys on import
    ignored: tuple[str, ...] = ()  # regexes of PyTorch keys that are buffers, not parameters

    # --- key names -------------------------------------------------------------------------------------------
    def canonical_torch_key(self, key: str) -> str:
        for pattern, repl in self.legacy_aliases:
            key = re.sub(pattern, repl, key)
        return key

    def is_ignored(self, key: str) -> bool:
        return any(re.search(p, key) for p in self.ignored)

    def _is_embedding(self, key: str) -> bool:
        return any(re.search(p, key) for p in self.embeddings)

    def flax_path(self, torch_key: str, ndim: int) -> Path:
        parts = torch_key.split(".")
        *modules, leaf = parts
        path: list[str] = []
        for part in modules:
            if part.isdigit():
                if not path:
                    raise WeightMismatchError(f"{self.name}: key {torch_key!r} starts with an index")
                path[-1] = f"{path[-1]}_{part}"
            else:
                path.append(part)
        if leaf == "bias":
            path.append("bias")
        elif leaf == "weight":
            if self._is_embedding(torch_key):
                path.append("embedding")
            elif ndim in (2, 4):
                path.append("kernel")
            elif ndim == 1:
                path.append("scale")
            else:
                raise WeightMismatchError(f"{self.name}: {torch_key!r} has {ndim} dims; no rule maps it")
        else:
            raise WeightMismatchError(f"{self.name}: {torch_key!r} ends in {leaf!r}, not weight or bias")
        return tuple(path)

    def torch_key(self, path: Path) -> str:
        parts: list[str] = []
        for name in path[:-1]:
            if name in self.literal_names:
                parts.append(name)
                continue
            m = re.fullmatch(r"(.*?)((?:_\d+)+)", name)
            if m is None:
                parts.append(name)
            else:
                parts.append(m.group(1))
                parts.extend(m.group(2).lstrip("_").split("_"))
        leaf = path[-1]
        parts.append({"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}[leaf])
        return ".".join(parts)

    # --- tensors ----------------------------------------------------------------------------------------------
    @staticmethod
    def to_flax_array(path: Path, value: np.ndarray) -> np.ndarray:
        if path[-1] == "kernel":
            if value.ndim == 4:
                return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
            return np.ascontiguousarray(value.T)
        return value

    @staticmethod
    def to_torch_array(path: Path, value: np.ndarray) -> np.ndarray:
        if path[-1] == "kernel":
            if value.ndim == 4:
                return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
            return np.ascontiguousarray(value.T)
        return value


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
    out: dict[Path, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
    keymap: KeyMap,
    expected: Mapping[str, Any] | None = None,
    source: str = "<state dict>",
) -> dict[str, Any]:
    """PyTorch state dict (NumPy arrays) -> Flax parameter tree.

    With ``expected`` (a tree of arrays or ``jax.ShapeDtypeStruct`` from ``jax.eval_shape``), every expected
    parameter must be present with its shape and nothing else may be: errors name the key and ``source``.
    """
    flat: dict[Path, np.ndarray] = {}
    origin: dict[Path, str] = {}
    for raw_key, value in state_dict.items():
        if keymap.is_ignored(raw_key):
            continue
        key = keymap.canonical_torch_key(raw_key)
        value = np.asarray(value)
        path = keymap.flax_path(key, value.ndim)
        if path in flat:
            raise WeightMismatchError(f"{source}: keys {origin[path]!r} and {raw_key!r} both map to {'/'.join(path)}")
        flat[path] = keymap.to_flax_array(path, value)
        origin[path] = raw_key
    if expected is not None:
        check_against(flat, flatten(expected), keymap, source, origin)
    return unflatten(flat)


def check_against(
    flat: Mapping[Path, Any],
    expected_flat: Mapping[Path, Any],
    keymap: KeyMap,
    source: str,
    origin: Mapping[Path, str] | None = None,
) -> None:
    origin = origin or {}
    missing = sorted(set(expected_flat) - set(flat))
    unexpected = sorted(set(flat) - set(expected_flat))
    problems: list[str] = []
    if missing:
        problems.append("missing keys: " + _first(keymap.torch_key(p) for p in missing))
    if unexpected:
        problems.append("unexpected keys: " + _first(origin.get(p, keymap.torch_key(p)) for p in unexpected))
    for path in sorted(set(flat) & set(expected_flat)):
        got, want = tuple(np.shape(flat[path])), tuple(expected_flat[path].shape)
        if got != want:
            problems.append(
                f"shape mismatch for {origin.get(path, keymap.torch_key(path))!r}: checkpoint gives "
                f"{_torch_shape(path, got)} (PyTorch layout), the model needs {_torch_shape(path, want)}"
            )
    if problems:
        raise WeightMismatchError(f"{source} does not fit {keymap.name}: " + "; ".join(problems))


def flax_to_torch(params: Mapping[str, Any], keymap: KeyMap) -> dict[str, np.ndarray]:
    """Flax parameter tree -> PyTorch state dict of NumPy arrays, keys in diffusers / transformers spelling."""
    out: dict[str, np.ndarray] = {}
    for path, value in flatten(params).items():
        out[keymap.torch_key(path)] = keymap.to_torch_array(path, np.asarray(value))
    return out


def _torch_shape(path: Path, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] == "kernel":
        if len(flax_shape) == 4:
            return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
        return tuple(reversed(flax_shape))
    return flax_shape


def _first(keys: Iterable[str], n: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def torch_shapes(params: Mapping[str, Any], keymap: KeyMap) -> dict[str, tuple[int, ...]]:
    """PyTorch key -> PyTorch-layout shape, for concrete or abstract (``jax.eval_shape``) parameter trees."""
    return {keymap.torch_key(p): _torch_shape(p, tuple(v.shape)) for p, v in flatten(params).items()}

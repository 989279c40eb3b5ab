"""The prompt-embedding store of a make-data output: CLIP text-encoder outputs keyed by the prompt text.

``make-data --cache-latents`` encodes every prompt the training pipeline can feed (the high-level input, ``""`` for
XPSR's training, and each record's low-level prompt and HR-derived low-level prompt) once, so the train step runs no
text encoder. Prompts repeat a lot (one ``""`` serves every image), so the store is keyed by text, not by record.

Layout: ``OUT/embeddings/<shard name>.npy`` + ``.json`` per records shard, written before the shard itself (so a
complete shard always has its part, and resuming or splitting make-data over hosts needs no coordination):

* ``.npy``: (n, 77, width) bfloat16 last hidden states, saved as their uint16 bit patterns (NumPy has no bfloat16;
  ``ml_dtypes`` views them back), memory-mapped when read;
* ``.json``: ``{"prompts": [n texts, row order], "dtype": "bfloat16", "shape": [n, 77, width], "encoder": {...}}``
  (``encoder``: the checkpoint and text-encoder config that made them).

A text in several parts has the same embedding in each; the first part (by name) answers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import ml_dtypes
import numpy as np

from xpsr_jax.files import atomic_open, atomic_write_json

EMBEDDINGS_DIR = "embeddings"
STORAGE_DTYPE = "bfloat16"


class MissingEmbeddingError(KeyError):
    """A prompt with no stored embedding; the message names the prompt and the store."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0])


def store_dir(data_path: str | os.PathLike) -> Path:
    """The store of a make-data output ``OUT`` (also given ``OUT/records``)."""
    path = Path(data_path)
    if path.name == "records" and not (path / EMBEDDINGS_DIR).is_dir():
        path = path.parent
    return path / EMBEDDINGS_DIR


def write_part(folder: str | os.PathLike, name: str, prompts: Sequence[str], embeddings: np.ndarray,
               encoder: dict) -> Path:
    """Write one part: ``embeddings`` (n, 77, width), row i the embedding of ``prompts[i]`` (unique texts).

    The ``.npy`` is written first and the ``.json`` last, each atomically: a part is there when its ``.json`` is."""
    prompts = list(prompts)
    if len(set(prompts)) != len(prompts) or embeddings.shape[0] != len(prompts) or embeddings.ndim != 3:
        raise ValueError(f"part {name}: {len(prompts)} prompts (unique: {len(set(prompts))}) for embeddings of "
                         f"shape {embeddings.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bits = np.ascontiguousarray(np.asarray(embeddings).astype(ml_dtypes.bfloat16)).view(np.uint16)
    with atomic_open(folder / f"{name}.npy", "wb") as f:
        np.save(f, bits)
    atomic_write_json(folder / f"{name}.json", {"prompts": prompts, "dtype": STORAGE_DTYPE,
                                                "shape": list(bits.shape), "encoder": encoder})
    return folder / f"{name}.json"


def part_exists(folder: str | os.PathLike, name: str) -> bool:
    return (Path(folder) / f"{name}.json").is_file() and (Path(folder) / f"{name}.npy").is_file()


@dataclass
class EmbeddingStore:
    """The parts of one store, read: ``store[text]`` -> (77, width) bfloat16 NumPy array."""

    folder: Path
    index: dict[str, tuple[int, int]]  # text -> (part, row)
    arrays: list[np.ndarray]  # memory-mapped, bfloat16 views
    encoder: dict  # the encoder that made the first part

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "EmbeddingStore":
        """Raises FileNotFoundError naming the folder when it holds no part."""
        folder = Path(folder)
        parts = sorted(folder.glob("*.json")) if folder.is_dir() else []
        parts = [p for p in parts if p.with_suffix(".npy").is_file()]
        if not parts:
            raise FileNotFoundError(f"no prompt embeddings in {folder} (written by make-data --cache-latents)")
        index, arrays, encoder = {}, [], None
        for i, part in enumerate(parts):
            meta = json.loads(part.read_text(encoding="utf-8"))
            if meta.get("dtype") != STORAGE_DTYPE:
                raise ValueError(f"{part}: dtype {meta.get('dtype')!r}, this version reads {STORAGE_DTYPE!r}")
            arr = np.load(part.with_suffix(".npy"), mmap_mode="r").view(ml_dtypes.bfloat16)
            if list(arr.shape) != meta["shape"] or len(meta["prompts"]) != arr.shape[0]:
                raise ValueError(f"{part}: {len(meta['prompts'])} prompts and shape {meta['shape']}, the array "
                                 f"beside it has shape {arr.shape}")
            if arrays and arr.shape[1:] != arrays[0].shape[1:]:
                raise ValueError(f"{part}: embeddings of shape {arr.shape[1:]}, {parts[0]} has "
                                 f"{arrays[0].shape[1:]}")
            arrays.append(arr)
            encoder = encoder if encoder is not None else meta.get("encoder", {})
            for row, text in enumerate(meta["prompts"]):
                index.setdefault(text, (i, row))
        return cls(folder, index, arrays, encoder)

    @property
    def shape(self) -> tuple[int, int]:
        """(tokens, width) of one embedding."""
        return tuple(self.arrays[0].shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, text: str) -> bool:
        return text in self.index

    def __getitem__(self, text: str) -> np.ndarray:
        try:
            part, row = self.index[text]
        except KeyError:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise MissingEmbeddingError(f"prompt {shown!r} has no embedding in {self.folder}") from None
        return np.asarray(self.arrays[part][row])


HIGHLEVEL_MODES = ("empty", "caption")


def highlevel_input(prompts, mode: str) -> str:
    """The high-level prompt training feeds for a record's prompts (a mapping with the caption fields): ``""`` in
    XPSR's training (``"empty"``), or the HR caption, falling back to the LR one (``"caption"``)."""
    if mode not in HIGHLEVEL_MODES:
        raise ValueError(f"highlevel_prompt must be one of {HIGHLEVEL_MODES}, got {mode!r}")
    return (prompts["highlevel_hr"] or prompts["highlevel"]) if mode == "caption" else ""


def training_prompts(prompts, mode: str) -> tuple[str, str, str]:
    """Every text the input pipeline can feed for one record: the high-level input, the low-level prompt, and the
    HR-derived low-level prompt of the HR-condition branch."""
    return highlevel_input(prompts, mode), prompts["lowlevel"], prompts["lowlevel_hr"]

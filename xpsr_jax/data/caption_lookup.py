"""Read a caption store (JSONL) and find the prompts of one training pair.

The store is one JSON object per line::

    {"id": "DIV2K_train_HR/0001", "highlevel": "...", "lowlevel": "...", "highlevel_hr": "...", "lowlevel_hr": "..."}

Fields, with the folders of the official data they stand for (reference §4.2, §8 item 15):

* ``highlevel``: the MLLM's scene caption of the LR image (``highlevel_prompt``);
* ``lowlevel``: its low-level (quality/degradation) description of the LR image (``lowlevel_prompt_q``);
* ``highlevel_hr``: the scene caption of the HR image (``highlevel_prompt_GT``);
* ``lowlevel_hr``: the low-level description of the HR image (``lowlevel_prompt_q_GT``), the prompt used when the
  HR image replaces the LR condition.

Ids: an image's id is its path relative to the HR folder, without extension, with ``/`` separators. Low-level
prompts of an LR image differ between degraded copies, so an entry may be keyed ``"{id}#{epoch}"`` for one copy;
``lookup`` tries that key first and then the plain image id. Missing fields and ``null`` read as ``""``; the
official reader keeps only the first line of a prompt file, lstripped, and so does this one.

This is the file format ``xpsr_jax.captions.store`` writes (same fields, ids, shard files and update rule); the
reader here is kept dependency-free so that building data needs nothing from the captioning side.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

CAPTION_FIELDS = ("highlevel", "lowlevel", "highlevel_hr", "lowlevel_hr")


@dataclass(frozen=True)
class Captions:
    """The four prompts of one pair; ``""`` where the store has none."""

    highlevel: str = ""
    lowlevel: str = ""
    highlevel_hr: str = ""
    lowlevel_hr: str = ""

    def empty_fields(self) -> list[str]:
        return [f for f in CAPTION_FIELDS if not getattr(self, f)]


def _clean(value, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: caption must be a string, got {type(value).__name__}")
    lines = value.splitlines()
    return lines[0].lstrip() if lines else ""


def _store_files(path: Path) -> list[Path]:
    """``path`` and the shard files a sharded caption run writes beside it (``name-shard-I-of-N.jsonl``)."""
    pattern = re.compile(re.escape(path.stem) + r"-shard-(\d+)-of-(\d+)" + re.escape(path.suffix))
    shards = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                shards.append(((int(m[2]), int(m[1])), p))
    files = ([path] if path.is_file() else []) + [p for _, p in sorted(shards)]
    if not files:
        raise FileNotFoundError(f"caption store not found: {path}")
    return files


def read_caption_jsonl(path: str | os.PathLike) -> dict[str, Captions]:
    """The JSONL caption store at ``path`` (with its shard files) -> {id: Captions}.

    As the caption writer appends: a later line of an id updates the fields it carries; ``null`` is absent; an
    unterminated, unparsable last line is an interrupted write and is dropped. Any other unreadable line is
    skipped with a warning naming file and line (that image then reads as uncaptioned and is counted).
    """
    fields: dict[str, dict] = {}
    for file in _store_files(Path(path)):
        lines = file.read_bytes().split(b"\n")  # not splitlines(): U+2028 may sit inside a caption
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                    raise ValueError("expected an object with a string 'id'")
                update = {k: _clean(obj[k], f"{file}:{n}") for k in CAPTION_FIELDS if obj.get(k) is not None}
            except (ValueError, UnicodeDecodeError) as e:
                if n < len(lines):  # the last piece has no newline after it: a write cut short
                    warnings.warn(f"{file}:{n}: skipping an unreadable caption line ({e})", stacklevel=2)
                continue
            fields.setdefault(obj["id"], {}).update(update)
    return {k: Captions(**v) for k, v in fields.items()}


def pair_key(image_id: str, epoch: int) -> str:
    """The store key of one degraded copy of an image."""
    return f"{image_id}#{epoch}"


def lookup(store: dict[str, Captions], image_id: str, epoch: int) -> Captions | None:
    """The captions of copy ``epoch`` of ``image_id``: its own entry, else the image's; None when neither."""
    return store.get(pair_key(image_id, epoch)) or store.get(image_id)

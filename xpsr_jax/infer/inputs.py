"""What ``xpsr-jax sr`` is asked to process: image files found in the arguments, their output names, their prompts.

Ids and outputs: a file given directly has id = its stem and is written as ``OUT/STEM.png``; a file found in a
folder has id = its path relative to that folder without extension (``sub/0001``, the caption store's id) and is
written as ``OUT/sub/0001.png``. Each PNG gets a ``.json`` sidecar beside it.

Prompts, per field (high-level caption, low-level quality description), the first source that has one wins:

1. ``--prompt`` / ``--lowlevel-prompt`` (the same for every image);
2. the caption store (``--captions store.jsonl``), record ``id``, fields ``highlevel`` / ``lowlevel``;
3. sidecar files beside the image: ``NAME.txt`` (high-level) and ``NAME.lowlevel.txt`` (low-level);
4. the official layout: an image in ``DIR/LR/`` reads ``DIR/highlevel_prompt/NAME.txt`` and
   ``DIR/lowlevel_prompt_q/NAME.txt``;
5. none: an empty string (the high-level prompt is then only the added prompt).

Prompt files are read like the official code reads them: the first line, leading whitespace removed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from xpsr_jax.captions.official import read_prompt_file
from xpsr_jax.data.images import IMAGE_EXTENSIONS, list_images
from xpsr_jax.infer.prompts import Prompt

FIELDS = ("highlevel", "lowlevel")


@dataclass(frozen=True)
class InputImage:
    """path: the file; image_id: its id (see module docstring); out_rel: output path relative to OUT, no suffix."""

    path: Path
    image_id: str
    out_rel: Path


def discover(arguments: Sequence[str | os.PathLike]) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Files and folders -> (images, problems). A missing path or a file that is not an image is a problem
    (path, reason), not an exception, so the other inputs still run. Duplicate output names are problems too."""
    found: list[InputImage] = []
    problems: list[tuple[str, str]] = []
    for arg in arguments:
        p = Path(arg)
        if p.is_dir():
            images = list_images(p)
            if not images:
                problems.append((str(p), "folder holds no images (" + ", ".join(IMAGE_EXTENSIONS) + ")"))
            for f in images:
                rel = f.relative_to(p).with_suffix("")
                found.append(InputImage(f, rel.as_posix(), rel))
        elif p.is_file():
            found.append(InputImage(p, p.stem, Path(p.stem)))
        else:
            problems.append((str(p), "no such file or folder"))
    seen: dict[Path, Path] = {}
    unique = []
    for item in found:
        if item.out_rel in seen:
            problems.append((str(item.path), f"same output name as {seen[item.out_rel]}; skipped"))
            continue
        seen[item.out_rel] = item.path
        unique.append(item)
    return unique, problems


class PromptFinder:
    """Looks up the prompts of an image in the sources above."""

    def __init__(self, highlevel: str | None = None, lowlevel: str | None = None, captions=None):
        self.flags = {"highlevel": highlevel, "lowlevel": lowlevel}
        self.captions = captions  # a CaptionStore or None

    def find(self, item: InputImage) -> Prompt:
        text, source = {}, {}
        for field in FIELDS:
            text[field], source[field] = self._one(item, field)
        return Prompt(text["highlevel"], text["lowlevel"], source)

    def _one(self, item: InputImage, field: str) -> tuple[str, str]:
        if self.flags[field] is not None:
            return self.flags[field], "flag"
        if self.captions is not None:
            record = self.captions.get(item.image_id) or {}
            value = record.get(field)
            if value:
                lines = value.splitlines()
                return (lines[0].lstrip() if lines else ""), "captions"
        suffix = ".txt" if field == "highlevel" else ".lowlevel.txt"
        sidecar = item.path.with_name(item.path.stem + suffix)
        if sidecar.is_file():
            return read_prompt_file(sidecar), "sidecar"
        if item.path.parent.name == "LR":
            folder = "highlevel_prompt" if field == "highlevel" else "lowlevel_prompt_q"
            official = item.path.parent.parent / folder / (item.path.stem + ".txt")
            if official.is_file():
                return read_prompt_file(official), "official"
        return "", "none"

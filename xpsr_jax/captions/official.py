"""Readers for captions that already exist as text files, so they can be imported into a caption store.

Two layouts:

* the official XPSR one, one folder per kind of prompt beside the images (reference §6, §8 item 15)::

      DIR/highlevel_prompt/NAME.txt       -> "highlevel"     (LLaVA caption of the LR image)
      DIR/lowlevel_prompt_q/NAME.txt      -> "lowlevel"      (Q-Instruct description of the LR image)
      DIR/highlevel_prompt_GT/NAME.txt    -> "highlevel_hr"  (of the HR image)
      DIR/lowlevel_prompt_q_GT/NAME.txt   -> "lowlevel_hr"

  ``NAME`` may contain sub-folders (``highlevel_prompt_GT/{src}/{name}.txt`` in the training sets); the id is
  the path below the prompt folder without ``.txt``. The validation scripts' ``lowlevel_prompt[_GT]`` spelling
  is read when the ``_q`` folder is absent.
* sidecar files: ``DIR/sub/0001.txt`` beside ``DIR/sub/0001.png`` -> id ``sub/0001``, one chosen field.

Files are read as the official code reads them: the first line, leading whitespace removed (and the line
break dropped); an empty file gives an empty string.
"""

from __future__ import annotations

import os
from pathlib import Path

from .store import FIELDS, CaptionStore
from xpsr_jax.errors import TextDecodeError

# field -> folder names, first existing one wins
OFFICIAL_FOLDERS = {
    "highlevel": ("highlevel_prompt",),
    "lowlevel": ("lowlevel_prompt_q", "lowlevel_prompt"),
    "highlevel_hr": ("highlevel_prompt_GT",),
    "lowlevel_hr": ("lowlevel_prompt_q_GT", "lowlevel_prompt_GT"),
}
# log files the official scripts leave among the prompts
_NOT_PROMPTS = frozenset({"_abnormal.txt"})


def read_prompt_file(path: str | os.PathLike) -> str:
    """First line of a prompt file, lstripped, without its line break. A file that is not UTF-8 raises
    TextDecodeError naming it: its bytes are never replaced silently (the prompt would change)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except UnicodeDecodeError as e:
        raise TextDecodeError(f"prompt file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    return first.lstrip().rstrip("\r\n")


def _text_files(folder: Path) -> dict[str, Path]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".txt") and name not in _NOT_PROMPTS and not name.startswith("."):
                path = Path(dirpath) / name
                found[path.relative_to(folder).with_suffix("").as_posix()] = path
    return found


def official_folders(root: str | os.PathLike) -> dict[str, Path]:
    """The prompt folders present under ``root``, by store field."""
    root = Path(root)
    present = {}
    for field, names in OFFICIAL_FOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                present[field] = root / name
                break
    return present


def read_official(root: str | os.PathLike) -> dict[str, dict]:
    """Records ``{id: {"id", field: text, ...}}`` from the official prompt folders under ``root``."""
    records: dict[str, dict] = {}
    for field, folder in official_folders(root).items():
        for rid, path in _text_files(folder).items():
            records.setdefault(rid, {"id": rid})[field] = read_prompt_file(path)
    return dict(sorted(records.items()))


def read_sidecars(root: str | os.PathLike, field: str = "highlevel") -> dict[str, dict]:
    """Records from ``NAME.txt`` files anywhere under ``root``, each filling ``field``."""
    if field not in FIELDS:
        raise ValueError(f"unknown caption field {field!r}; expected one of {', '.join(FIELDS)}")
    return {rid: {"id": rid, field: read_prompt_file(path)} for rid, path in sorted(_text_files(Path(root)).items())}


def import_records(out: str | os.PathLike, records: dict[str, dict]) -> int:
    """Append ``records`` to the store ``out`` (their fields override what it holds); returns how many."""
    with CaptionStore.open(out) as store:
        store.upload_seconds = None  # in a bucket: one upload, on close (each upload sends the whole file)
        for record in records.values():
            store.add(record)
    return len(records)

"""Where a command may write: never over one of its inputs, and over existing results only when asked.

Each writing command calls these before any slow work (model loading, compiling), so a refusal costs nothing:

* :func:`refuse_over_inputs`: the output is an input, lies inside an input folder, or (for commands that replace
  their output folder as a whole) holds an input. Refused even with ``--overwrite``.
* :func:`refuse_existing`: result files already there; refused unless ``--overwrite``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from xpsr_jax.errors import InputNotFoundError, OutputExistsError, UsageError
from xpsr_jax.paths import as_path


def _resolved(path: str | os.PathLike):
    path = as_path(path)  # a gs:// path is compared as written (epath cannot resolve URLs)
    return path.expanduser().resolve() if isinstance(path, Path) else path


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def refuse_over_inputs(out: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]],
                       what: str = "OUT", replaces_folder: bool = False) -> None:
    """UsageError when ``out`` is one of ``inputs`` ((label, path) pairs; None skipped) or lies inside one; with
    ``replaces_folder`` (the command may delete and rewrite ``out`` as a whole) also when an input lies inside
    ``out``."""
    target = _resolved(out)
    for label, path in inputs:
        if path is None:
            continue
        source = _resolved(path)
        if target == source:
            raise UsageError(f"{what} {out} is the input {label}; write to another folder")
        if _inside(target, source):
            raise UsageError(f"{what} {out} lies inside the input {label} {path}; write outside it")
        if replaces_folder and _inside(source, target):
            raise UsageError(f"{what} {out} holds the input {label} {path}; write to another folder")


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite: bool, what: str = "OUT") -> None:
    """OutputExistsError naming the first of ``paths`` that exists (and how many do), unless ``overwrite``."""
    if overwrite:
        return
    existing = [as_path(p) for p in paths
                if (os.path.lexists(p) if isinstance(as_path(p), Path) else as_path(p).exists())]
    if existing:
        more = f" (and {len(existing) - 1} more output(s))" if len(existing) > 1 else ""
        raise OutputExistsError(f"{what}: {existing[0]} already exists{more}; pass --overwrite to replace it")


def require_folder(path: str | os.PathLike | None, what: str) -> None:
    """InputNotFoundError unless ``path`` is None or an existing folder."""
    if path is None:
        return
    if not as_path(path).exists():
        raise InputNotFoundError(f"{what} {path}: no such folder")
    if not as_path(path).is_dir():
        raise InputNotFoundError(f"{what} {path}: not a folder")


def require_file(path: str | os.PathLike | None, what: str) -> None:
    """InputNotFoundError unless ``path`` is None or an existing file."""
    if path is None:
        return
    if not as_path(path).exists():
        raise InputNotFoundError(f"{what} {path}: no such file")
    if not as_path(path).is_file():
        raise InputNotFoundError(f"{what} {path}: not a file")


def folder_or_absent(out: str | os.PathLike, what: str = "OUT") -> None:
    """OutputExistsError when ``out`` exists and is not a folder: an output folder never replaces a file."""
    if Path(out).exists() and not Path(out).is_dir():
        raise OutputExistsError(f"{what} {out} is a file, not a folder")


def writable_folder(out: str | os.PathLike, what: str = "OUT") -> Path:
    """Create the output folder ``out`` up front (so reports can always be written); UsageError when a file
    is in the way."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{what} {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out

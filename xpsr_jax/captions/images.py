"""Image files of a folder tree and their ids (the file stem relative to the root, "/"-separated)."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


def image_id(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``root/sub/0001.png`` -> ``sub/0001``; the same id on every OS."""
    rel = Path(path).relative_to(root)
    return rel.with_suffix("").as_posix()


def list_images(root: str | os.PathLike) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Images under ``root`` (recursively) as ``{id: path}``, plus ids shared by several files.

    Ids are stems, so ``a.png`` and ``a.jpg`` in one folder collide; those ids are returned separately
    (with every file that claims them) instead of picking one silently.
    """
    root = Path(root)
    claims: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # no .ipynb_checkpoints and the like
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(dirpath) / name
            claims.setdefault(image_id(path, root), []).append(path)
    unique = {k: v[0] for k, v in sorted(claims.items()) if len(v) == 1}
    duplicates = {k: v for k, v in sorted(claims.items()) if len(v) > 1}
    return unique, duplicates


def load_rgb(path: str | os.PathLike):
    """A fully decoded RGB PIL image; raises OSError (or PIL's subclasses) for unreadable files."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # decode now: truncated files fail here, not inside the processor
        return img.convert("RGB")

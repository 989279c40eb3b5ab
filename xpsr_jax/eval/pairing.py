"""Pair prediction, ground-truth and (optional) low-resolution images by file stem, and say what did not pair.

``x/0801.png`` in the prediction folder pairs with ``0801.jpg`` or ``0801.png`` in the ground-truth folder.
Nothing is dropped silently: a stem present on one side only, two files with one stem in a folder, an image
that cannot be read, or a prediction whose size differs from its ground truth each become a
:class:`Mismatch` that the reports list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Mismatch kinds, worded for a reader of the report.
MISSING_IN_PRED = "missing in prediction"
MISSING_IN_GT = "missing in ground truth"
MISSING_IN_LR = "missing in LR"
DUPLICATE_STEM = "duplicate stem"
SIZE_MISMATCH = "size mismatch"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Pair:
    """One prediction with its ground truth and, when an LR folder is given and has it, its LR input."""

    stem: str
    pred: Path
    gt: Path
    lr: Path | None = None


@dataclass(frozen=True)
class Mismatch:
    """An image that is not evaluated, or an LR image that is missing, and why."""

    stem: str
    kind: str
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def list_images(folder: str | Path) -> dict[str, list[Path]]:
    """Image files directly inside ``folder`` (not recursive), grouped by stem, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(path.stem, []).append(path)
    return found


def _unique(images: dict[str, list[Path]], side: str, mismatches: list[Mismatch]) -> dict[str, Path]:
    """Keep stems with exactly one file; report the others as duplicates (which one is meant is unknowable)."""
    unique = {}
    for stem, paths in images.items():
        if len(paths) == 1:
            unique[stem] = paths[0]
        else:
            names = ", ".join(p.name for p in paths)
            mismatches.append(Mismatch(stem, DUPLICATE_STEM, f"{side} folder has {len(paths)} files: {names}"))
    return unique


def pair_folders(pred_dir: str | Path, gt_dir: str | Path,
                 lr_dir: str | Path | None = None) -> tuple[list[Pair], list[Mismatch]]:
    """Pairs (in stem order) and mismatches of the three folders. Sizes are checked later, when images load."""
    mismatches: list[Mismatch] = []
    preds = _unique(list_images(pred_dir), "prediction", mismatches)
    gts = _unique(list_images(gt_dir), "ground-truth", mismatches)
    lrs = _unique(list_images(lr_dir), "LR", mismatches) if lr_dir is not None else {}
    duplicated = {m.stem for m in mismatches}

    for stem in sorted(set(gts) - set(preds) - duplicated):
        mismatches.append(Mismatch(stem, MISSING_IN_PRED, f"{gts[stem].name} has no prediction"))
    for stem in sorted(set(preds) - set(gts) - duplicated):
        mismatches.append(Mismatch(stem, MISSING_IN_GT, f"{preds[stem].name} has no ground truth"))

    pairs = []
    for stem in sorted(set(preds) & set(gts)):
        lr = lrs.get(stem)
        if lr_dir is not None and lr is None and stem not in duplicated:
            mismatches.append(Mismatch(stem, MISSING_IN_LR, "no LR image (metrics are computed; the page shows "
                                                            "no LR crop)"))
        pairs.append(Pair(stem, preds[stem], gts[stem], lr))
    mismatches.sort(key=lambda m: (m.stem, m.kind))
    return pairs, mismatches


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (palette, grey and alpha images are converted, as pyiqa does)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def load_pair(pair: Pair) -> tuple[np.ndarray | None, np.ndarray | None, Mismatch | None]:
    """Both images of a pair, or a mismatch (unreadable file or size mismatch) instead."""
    try:
        pred = load_rgb(pair.pred)
        gt = load_rgb(pair.gt)
    except (OSError, ValueError) as exc:
        return None, None, Mismatch(pair.stem, UNREADABLE, f"{type(exc).__name__}: {exc}")
    if pred.shape != gt.shape:
        detail = (f"prediction {pred.shape[1]}x{pred.shape[0]} vs ground truth {gt.shape[1]}x{gt.shape[0]} "
                  "(width x height)")
        return None, None, Mismatch(pair.stem, SIZE_MISMATCH, detail)
    return pred, gt, None

"""Caption work read straight from a ``make-data`` output: every record's degraded LR and its HR crop.

The LR-derived low-level prompt describes one degraded copy, so the official order is degrade -> caption ->
dataset. Reading the pairs from the records saves writing them out as image folders first. Each record is
captioned under the key ``"{id}#{epoch}"`` (``caption_lookup.pair_key``), the key ``make-data --captions`` tries
first, and its HR crop fills the ``_hr`` fields (training uses ``lowlevel_hr`` when the HR image replaces the
condition, reference §4.2). An LR stored at 1/4 (``make-data --lr-size 128``) is bicubic-upsampled to the HR size
first, as the official data stored it and as training feeds it, so both layouts get the same captions.

Work is dealt by record number, record ``k`` to shard ``k % n``. Whether a record is done is known only once its
id is read, so records are read as the pass goes (a rerun reads its share again and skips the done ones).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path


def is_records_folder(path: str | os.PathLike) -> bool:
    """A make-data output (``OUT`` or ``OUT/records``) rather than a folder of images."""
    from xpsr_jax.data.records import RECORDS_DIR, SHARD_SUFFIX

    path = Path(path)
    folder = path / RECORDS_DIR if (path / RECORDS_DIR).is_dir() else path
    return path.is_dir() and any(folder.glob(f"*{SHARD_SUFFIX}"))


def _pil(png: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        img.load()
        return img.convert("RGB")


def _lr_at_hr_size(lr_png: bytes, hr):
    """The LR as the condition image training sees: upsampled (bicubic, as the pipeline) when stored at 1/4."""
    import numpy as np
    from PIL import Image

    lr = _pil(lr_png)
    if lr.size == hr.size:
        return lr
    from xpsr_jax.data.degradations import upsample_bicubic

    up = upsample_bicubic(np.asarray(lr, np.float32) / np.float32(255.0), (hr.size[1], hr.size[0]))
    return Image.fromarray(np.clip(np.round(up * 255.0), 0, 255).astype(np.uint8))


@dataclass
class RecordPairs:
    """The records of one make-data output that one shard owns, loaded batch by batch for the caption loop."""

    path: Path
    num_shards: int = 1
    shard_index: int = 0
    already_done: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        from xpsr_jax.data.pipeline import records_source

        self.source = records_source(self.path)  # FileNotFoundError / ValueError name an unfinished output
        owned = range(self.shard_index, len(self.source), self.num_shards)
        self.pending = list(owned)
        if self.pending:
            self._check_has_lr(self.pending[0])

    def _parse(self, k: int) -> dict:
        from xpsr_jax.data.records import parse

        return parse(self.source[k])

    def _check_has_lr(self, k: int) -> None:
        rec = self._parse(k)
        if not len(rec["lr"]):
            raise ValueError(f"{self.path}: record {k} ({rec['id']!r}) holds no LR image: the records were made with "
                             "make-data --hr-only and are degraded during training, so there is no fixed LR copy to "
                             "caption; caption the HR folder instead (captions keyed by image id)")

    def load_batch(self, batch: list[int], done: set[str]) -> list[tuple[str, object, object]]:
        """Record numbers -> ``[(key, LR image, HR image)]`` for those not in ``done``; unreadable ones go to
        ``problems``, done ones to ``already_done``."""
        from xpsr_jax.data.caption_lookup import pair_key

        loaded = []
        for k in batch:
            key = f"record {k}"
            try:
                rec = self._parse(k)
                key = pair_key(rec["id"], rec["epoch"])
                if key in done:
                    self.already_done += 1
                    continue
                if not len(rec["lr"]):
                    raise ValueError("no LR image (an --hr-only record)")
                hr = _pil(rec["hr"])
                loaded.append((key, _lr_at_hr_size(rec["lr"], hr), hr))
            except Exception as exc:  # a damaged record: report it, caption the rest
                self.problems.append((key, f"cannot read record {k} of {self.path}: {type(exc).__name__}: {exc}"))
        return loaded

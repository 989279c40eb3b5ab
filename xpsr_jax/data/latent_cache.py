"""make-data's side of the encoder cache: per shard, the VAE posterior of every HR crop (in batches) and the
embeddings of the shard's prompts (one store part, see :mod:`xpsr_jax.data.embeddings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from xpsr_jax.data import embeddings, records


class ShardCacher:
    """``moments(results)`` for a batch of make-data results, ``add(captions)`` for each written record, then
    ``finish(shard_name)`` writes the shard's part of the embedding store (before the shard is renamed)."""

    def __init__(self, encoders, out: str | Path, highlevel_prompt: str = "empty"):
        self.encoders, self.highlevel_prompt = encoders, highlevel_prompt
        self.folder = Path(out) / embeddings.EMBEDDINGS_DIR
        self._prompts: dict[str, None] = {}  # insertion-ordered set

    @property
    def batch_size(self) -> int:
        return self.encoders.batch_size

    def moments(self, results: Sequence) -> list[np.ndarray | None]:
        """Per result: its HR crop's posterior moments (h, w, 2C) float32, None for a skipped item."""
        keep = [i for i, r in enumerate(results) if r.skip is None]
        out: list[np.ndarray | None] = [None] * len(results)
        if keep:
            hr = [records.decode_png(results[i].hr_png, f"HR crop of {results[i].task.origin}") for i in keep]
            for i, m in zip(keep, self.encoders.moments(hr)):
                out[i] = m
        return out

    def add(self, captions) -> None:
        fields = {name: getattr(captions, name) for name in ("highlevel", "lowlevel", "highlevel_hr",
                                                               "lowlevel_hr")}
        for text in embeddings.training_prompts(fields, self.highlevel_prompt):
            self._prompts.setdefault(text, None)

    def finish(self, shard_name: str) -> int:
        """Encode and write the prompts added since the last call; returns how many."""
        texts, self._prompts = list(self._prompts), {}
        if not texts:  # every item skipped: still a part, so a complete shard always has one
            texts = [""]
        embeddings.write_part(self.folder, shard_name, texts, self.encoders.embed(texts), self.encoders.describe())
        return len(texts)

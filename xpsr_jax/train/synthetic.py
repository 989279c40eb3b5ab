"""A deterministic in-memory data source for tests and smoke runs: global batch k is a pure function of (seed, k)
and process p keeps its rows of it, so one process and several see the same global batch; the iterator's state is
just k, so checkpoints restore it exactly.

Images are smooth random fields (HR) and their blurred, down-up-sampled copies (LR), so the loss has structure to
learn; prompts are random token ids with BOS/EOS.
"""

from __future__ import annotations

import json

import numpy as np

BOS, EOS = 49406, 49407


class SyntheticIterator:
    """Yields process-local batches: ``hr`` [-1,1], ``lr`` [0,1] (B,R,R,3) float32, ``ids_high``/``ids_low``."""

    def __init__(self, local_batch: int, resolution: int, seed: int = 0, process_index: int = 0,
                 vocab_size: int = 49408, process_count: int = 1):
        self.local_batch, self.resolution = local_batch, resolution
        self.seed, self.process_index, self.vocab_size = seed, process_index, vocab_size
        self.process_count = process_count
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self._global(np.random.default_rng([self.seed, self.index]))
        self.index += 1
        rows = slice(self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch)
        return {k: v[rows] for k, v in batch.items()}

    def _global(self, rng) -> dict[str, np.ndarray]:
        b, r = self.local_batch * self.process_count, self.resolution
        coarse = rng.uniform(-1, 1, (b, r // 16, r // 16, 3)).astype(np.float32)
        hr = _upsample(coarse, 16) + 0.1 * rng.standard_normal((b, r, r, 3)).astype(np.float32)
        hr = np.clip(hr, -1, 1)
        lr = _upsample(hr.reshape(b, r // 4, 4, r // 4, 4, 3).mean((2, 4)), 4)
        return {"hr": hr, "lr": (lr + 1) / 2, "ids_high": self._ids(rng, b, empty=True), "ids_low": self._ids(rng, b)}

    def _ids(self, rng, b: int, empty: bool = False) -> np.ndarray:
        ids = np.full((b, 77), EOS, np.int32)
        ids[:, 0] = BOS
        if not empty:
            n = rng.integers(1, 20)
            ids[:, 1:1 + n] = rng.integers(0, min(self.vocab_size, BOS), (b, n))
        return ids

    # grain's orbax handler protocol: bytes state, set_state, start_prefetch
    def get_state(self) -> bytes:
        return json.dumps({"index": self.index, "seed": self.seed}).encode()

    def set_state(self, state: bytes) -> None:
        s = json.loads(state)
        if s["seed"] != self.seed:
            raise ValueError(f"data state was saved with seed {s['seed']}, this run uses {self.seed}")
        self.index = int(s["index"])

    def start_prefetch(self) -> None:
        pass


def _upsample(x: np.ndarray, f: int) -> np.ndarray:
    return np.repeat(np.repeat(x, f, axis=1), f, axis=2)

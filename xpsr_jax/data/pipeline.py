"""The grain input pipeline of XPSR training (reference §4.2, §4.3): records -> batches of NumPy arrays.

Per example, as the official ``LocalImageDataset`` with ``original_image_ratio = 0.1``:

1. decode the record's PNGs (``decode_record``); with ``online_degradation`` the record holds only the HR image
   (``make-data --hr-only``) and the Real-ESRGAN chain runs here (crop, flip, USM, degradation);
2. with probability ``original_image_ratio`` the HR image itself becomes the condition and the HR-derived low-level
   prompt (``lowlevel_hr``) replaces the LR one;
3. tokenise both prompts to 77 CLIP ids (truncated). The high-level input is ``""`` for every example by default
   (``highlevel_prompt="empty"``, what the official training feeds, reference §8 item 1); ``"caption"`` uses the
   HR caption (``highlevel_hr``, falling back to ``highlevel`` when empty).

Batches: ``{"hr": (B, H, W, 3) float32 in [-1, 1], "lr": (B, H, W, 3) float32 in [0, 1],
"ids_high": (B, 77) int32, "ids_low": (B, 77) int32}``; an LR stored at 1/4 is bicubic-upsampled to H×W here.

Cached encoder outputs (``make-data --cache-latents``): with ``cached_latents`` the batch also carries
``"latent_moments": (B, H/8, W/8, 2C) bfloat16``, the stored VAE posterior of each HR crop (the step samples it);
with ``embeddings`` (a store folder, :mod:`xpsr_jax.data.embeddings`) the prompts are looked up instead of
tokenised: ``"emb_high"``, ``"emb_low"``: (B, 77, width) bfloat16 replace the ids.

Order of the grain ``MapDataset``: source -> decode -> random pair (seeded by the record's global index and epoch)
-> this process's equal share -> shuffle (new order every epoch) -> repeat -> tokenise -> batch -> prefetch
threads -> optional worker processes. Random draws depend on the record and epoch only, not on the process split
or the number of workers, and batches come out in the same order with or without workers.

Checkpointing: the iterator's state saves and restores with orbax through grain's handler::

    mngr.save(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it), ...))
    mngr.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it), ...))

(one JSON file per process; restore into an iterator built with the same config, source and process split).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import grain
import numpy as np

from xpsr_jax.data import records
from xpsr_jax.data.embeddings import HIGHLEVEL_MODES, EmbeddingStore, highlevel_input
from xpsr_jax.data.degradation_config import DegradationConfig
from xpsr_jax.data.degradations import degrade_pair, upsample_bicubic
from xpsr_jax.data.import_guard import finish_lazy_imports, finish_lazy_imports_in_worker
from xpsr_jax.data.tokenizer import ClipTokenizer


@dataclass(frozen=True)
class PipelineConfig:
    """Input pipeline settings (see the module docstring)."""

    batch_size: int = 8
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None: repeat forever
    drop_remainder: bool = True
    original_image_ratio: float = 0.1
    highlevel_prompt: str = "empty"  # "empty" (official training) | "caption"
    online_degradation: bool = False
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    tokenizer: str | None = None  # None: the bundled CLIP vocabulary; or a tokenizer folder / BPE file
    max_length: int = 77
    worker_count: int = 0  # processes; 0: threads of this process only
    worker_buffer_size: int = 2  # batches each worker keeps ready
    num_threads: int = 2  # threads computing batches (per process)
    prefetch_batches: int = 2
    cached_latents: bool = False  # batches carry the records' stored HR posteriors ("latent_moments")
    embeddings: str | None = None  # a prompt-embedding store: batches carry emb_high/emb_low instead of ids

    def __post_init__(self):
        if self.highlevel_prompt not in HIGHLEVEL_MODES:
            raise ValueError(f"highlevel_prompt must be one of {HIGHLEVEL_MODES}, got {self.highlevel_prompt!r}")
        if not 0.0 <= self.original_image_ratio <= 1.0:
            raise ValueError(f"original_image_ratio must lie in [0, 1], got {self.original_image_ratio}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.cached_latents and self.online_degradation:
            raise ValueError("cached latents belong to stored HR crops; online degradation crops anew")


def records_source(path: str | os.PathLike | list) -> grain.sources.ArrayRecordDataSource:
    """A make-data output (``OUT``, ``OUT/records``, a shard or a list of shards) as a grain source of bytes."""
    return grain.sources.ArrayRecordDataSource([str(p) for p in records.list_shards(path)])


def decode_record(element: Any) -> dict:
    """Record bytes -> {id, hr uint8, lr uint8 or None, prompts}; decoded dicts (``SyntheticSource``) pass."""
    if isinstance(element, dict):
        return element
    rec = records.parse(element)
    name = f"record {rec['id']!r} (epoch {rec['epoch']}, from {rec['source']})"
    out = {k: rec[k] for k in ("id", "highlevel", "lowlevel", "highlevel_hr", "lowlevel_hr")}
    out["hr"] = records.decode_png(rec["hr"], name)
    out["lr"] = records.decode_png(rec["lr"], name) if len(rec["lr"]) else None
    out["latent_moments"] = rec["latent_moments"]
    return out


class MakePair(grain.transforms.RandomMap):
    """Decoded record + rng -> {hr [-1, 1], lr [0, 1] float32, high, low prompts} (steps 1-3 of the docstring)."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        swap = bool(rng.random() < cfg.original_image_ratio)  # drawn first, so the draw order never depends on it
        hr, lr = element["hr"], element["lr"]
        if cfg.online_degradation:
            if lr is not None:
                raise ValueError(f"{element['id']}: the record holds a degraded pair (its HR is already cropped "
                                 "and sharpened); online degradation needs records made with make-data --hr-only")
            hr, lr_up, _ = degrade_pair(hr, rng, cfg.degradation)
            lr = lr_up.astype(np.float32) / np.float32(255.0)
        elif lr is None:
            raise ValueError(f"{element['id']}: the record has no LR image (made with --hr-only); set "
                             "online_degradation=True")
        else:
            lr = lr.astype(np.float32) / np.float32(255.0)
            if lr.shape[:2] != hr.shape[:2]:  # LR stored at 1/4: upsample as the official data did
                lr = np.clip(upsample_bicubic(lr, hr.shape[:2]), 0.0, 1.0)
        hr_f = hr.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        low = element["lowlevel"]
        if swap:  # reference §4.2: the HR image (in [0, 1]) is the condition, with its own low-level prompt
            lr, low = hr.astype(np.float32) / np.float32(255.0), element["lowlevel_hr"]
        out = {"hr": hr_f, "lr": lr, "high": highlevel_input(element, cfg.highlevel_prompt), "low": low}
        if cfg.cached_latents:
            if element.get("latent_moments") is None:
                raise ValueError(f"record {element['id']!r} holds no cached latents (made without make-data "
                                 "--cache-latents); train with config.loss.latents='vae_sample'")
            out["latent_moments"] = element["latent_moments"]
        return out


@functools.cache
def _tokenizer(path: str | None, max_length: int):
    return ClipTokenizer.load(path, max_length=max_length)


class Tokenize(grain.transforms.Map):
    """{..., high, low} -> {hr, lr, ids_high, ids_low}; the tokenizer loads once per process, on first use."""

    def __init__(self, path: str | None = None, max_length: int = 77):
        self.path, self.max_length = path, max_length

    def map(self, element: dict) -> dict:
        ids = _tokenizer(self.path, self.max_length)([element["high"], element["low"]])
        out = {k: v for k, v in element.items() if k not in ("high", "low")}
        out["ids_high"], out["ids_low"] = ids[0], ids[1]
        return out


@functools.cache
def _store(path: str) -> EmbeddingStore:
    return EmbeddingStore.open(path)


class LookupEmbeddings(grain.transforms.Map):
    """{..., high, low} -> {..., emb_high, emb_low}: the prompts' stored text-encoder outputs (the store opens
    once per process, on first use; a prompt it lacks is an error naming it)."""

    def __init__(self, path: str):
        self.path = str(path)

    def map(self, element: dict) -> dict:
        store = _store(self.path)
        out = {k: v for k, v in element.items() if k not in ("high", "low")}
        out["emb_high"], out["emb_low"] = store[element["high"]], store[element["low"]]
        return out


def _process_share(ds: grain.MapDataset, index: int, count: int) -> grain.MapDataset:
    """Every ``count``-th record from ``index``, over the largest multiple of ``count`` records, so that every
    process sees the same number of examples (and batches): a process running out first would stall the others."""
    if not 0 <= index < count:
        raise ValueError(f"process index {index} must lie in [0, {count})")
    usable = len(ds) // count * count
    if usable == 0:
        raise ValueError(f"{len(ds)} records cannot be split between {count} processes")
    return ds[index:usable:count]


def build_dataset(source, cfg: PipelineConfig = PipelineConfig(), *, process_index: int | None = None,
                  process_count: int | None = None) -> grain.IterDataset:
    """The pipeline over ``source`` (``records_source(...)``, ``SyntheticSource`` or any random-access source of
    record bytes or decoded dicts). process_index/process_count default to ``jax.process_index()/count()``."""
    # The reader threads (and workers) parse records with tfds's codec: its imports finish here, before they start.
    finish_lazy_imports()
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    ds = grain.MapDataset.source(source).map(decode_record)
    ds = ds.random_map(MakePair(cfg), seed=cfg.seed % 2**32)
    ds = _process_share(ds, process_index, process_count)
    if cfg.shuffle:
        # A fixed offset keeps the order's seed apart from the pair draws' seed.
        ds = ds.shuffle(seed=(cfg.seed + 0x5EED) % 2**32)
    ds = ds.repeat(cfg.num_epochs)
    ds = ds.map(LookupEmbeddings(cfg.embeddings) if cfg.embeddings else Tokenize(cfg.tokenizer, cfg.max_length))
    ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
    threads = max(cfg.num_threads, 1)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                 prefetch_buffer_size=max(cfg.prefetch_batches, threads)))
    if cfg.worker_count > 0:
        _absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count,
                                                               per_worker_buffer_size=cfg.worker_buffer_size),
                                  worker_init_fn=finish_lazy_imports_in_worker)
    return it_ds


def make_iterator(source, cfg: PipelineConfig = PipelineConfig(), **kwargs) -> grain.DatasetIterator:
    """``iter(build_dataset(...))``: yields batch dicts; has ``get_state``/``set_state`` (and orbax support through
    ``grain.checkpoint``). Close it (``it.close()``) when workers are used."""
    return iter(build_dataset(source, cfg, **kwargs))


def _absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app they are unparsed and reading them fails."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()

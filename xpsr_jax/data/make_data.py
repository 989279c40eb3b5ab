"""``make-data``: HR images -> degraded LR/HR pairs (+ captions) in ArrayRecord shards, resumable and shardable.

What XPSR's offline data generation does (reference §4.1), made reproducible and restartable:

* every HR image is decoded by ``images.decode_image`` (odd files converted, broken ones skipped and counted),
  cropped to 512² (flip p = 0.5, reflect-101 padding when smaller), USM-sharpened and degraded by the Real-ESRGAN
  chain (``degradations.degrade_pair``); the LR is stored bicubic-upsampled to 512² (what XPSR trains on) or at
  128² (``lr_size=128``);
* ``epochs = K`` writes K degraded copies of every image (the official data had 60), each with its own draws;
  item (epoch, index) is seeded by ``(seed, epoch, index)`` only (``shard_plan``);
* prompts come from a caption store (``caption_lookup``), joined by image id;
* shards are written under a temporary name and renamed when complete: a rerun with the same settings skips
  finished shards and redoes the rest. ``OUT/plan.json`` holds the settings and a rerun with others is refused
  (``overwrite=True`` deletes what make-data wrote there and starts over);
* ``num_hosts``/``host_index`` split the shards between machines; ``workers`` processes share one host's items;
* ``cache_weights`` (``--cache-latents --weights W``) also stores the VAE posterior of each HR crop in its record
  and the text-encoder outputs of the prompts training feeds in ``OUT/embeddings/`` (``latent_cache``), computed
  with that Flax checkpoint's encoders, so the train step runs neither (``config.loss.latents/text="precomputed"``);
* ``OUT/stats/<shard>.json`` keeps each shard's counts; the summary (``OUT/summary.json``, or
  ``summary-host{i}-of-{n}.json`` on several hosts) adds them up. When every shard exists, tfds metadata is
  written so ``records.tfds_builder(OUT)`` reads the dataset; never for a dataset of 0 pairs, and a host whose
  shards hold no pair ends with ``NothingDoneError`` (every image skipped is not a success).

Meta ``crop`` (top, left) is counted in the flipped, padded image, as ``degradations.random_crop`` cuts it.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm import tqdm

from xpsr_jax.data import records
from xpsr_jax.data.caption_lookup import Captions, lookup, read_caption_jsonl
from xpsr_jax.data.degradation_config import DegradationConfig
from xpsr_jax.data.embeddings import EMBEDDINGS_DIR, HIGHLEVEL_MODES
from xpsr_jax.data.hr_sources import TfdsSource, open_source
from xpsr_jax.data.images import ImageDecodeError
from xpsr_jax.data.pair_item import CORRUPT, ItemResult, ItemSettings, ItemTask, init_worker, make_item, \
    make_item_in_worker
from xpsr_jax.data.shard_plan import ShardPlan
from xpsr_jax.errors import NothingDoneError, UsageError
from xpsr_jax.files import atomic_write_json

PLAN_FILE = "plan.json"
STATS_DIR = "stats"
MAX_LISTED_SKIPS = 100  # the summary lists this many skipped files by name; the counts cover all


@dataclass(frozen=True)
class MakeDataConfig:
    """Settings of one make-data run; see ``xpsr-jax make-data --help`` for each."""

    source: str
    out: str
    epochs: int = 1
    seed: int = 0
    crop_size: int = 512
    lr_size: int | None = None  # None: crop_size (the upsampled LR)
    hr_only: bool = False
    shard_size: int = 500
    workers: int = 0
    num_hosts: int = 1
    host_index: int = 0
    captions: str | None = None
    share_draws: int = 0
    use_usm: bool = True
    alpha: str = "white"
    min_pixels: int = 0
    min_bytes: int = 0
    on_error: str = "skip"  # "fail": stop at the first unreadable image
    tfds_split: str = "train"
    tfds_data_dir: str | None = None
    tfds_image_key: str | None = None
    cache_weights: str | None = None  # a Flax checkpoint: cache the HR posteriors and prompt embeddings with it
    cache_batch: int = 16  # images (and prompts) per encoder call
    highlevel_prompt: str = "empty"  # which high-level input the cache serves (config.model.highlevel_prompt)
    progress: bool = True
    overwrite: bool = False  # an OUT made with other settings: delete make-data's files there and start over

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.hr_only and self.epochs > 1:
            raise ValueError("hr_only records are degraded online with new draws every epoch; use epochs=1")
        if self.num_hosts < 1 or not 0 <= self.host_index < self.num_hosts:
            raise ValueError(f"host_index {self.host_index} must lie in [0, num_hosts={self.num_hosts})")
        if self.on_error not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', got {self.on_error!r}")
        if self.cache_weights and self.hr_only:
            raise ValueError("cached latents need the final HR crops; hr_only records are cropped and degraded "
                             "online")
        if self.highlevel_prompt not in HIGHLEVEL_MODES:
            raise ValueError(f"highlevel_prompt must be one of {HIGHLEVEL_MODES}, got {self.highlevel_prompt!r}")
        if self.cache_batch < 1:
            raise ValueError(f"cache_batch must be >= 1, got {self.cache_batch}")


@dataclass
class Counts:
    """What happened to the items of one shard (or a sum of shards)."""

    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    padded: int = 0
    captions_joined: int = 0
    captions_missing: int = 0
    captions_empty: Counter = field(default_factory=Counter)
    skipped_files: list = field(default_factory=list)

    def add(self, other: "Counts") -> None:
        self.written += other.written
        self.padded += other.padded
        self.captions_joined += other.captions_joined
        self.captions_missing += other.captions_missing
        for name in ("skipped", "converted", "captions_empty"):
            getattr(self, name).update(getattr(other, name))
        room = MAX_LISTED_SKIPS - len(self.skipped_files)
        self.skipped_files.extend(other.skipped_files[:max(room, 0)])

    def to_json(self) -> dict:
        return {"written": self.written, "skipped": dict(self.skipped), "skipped_total": sum(self.skipped.values()),
                "converted": dict(self.converted), "padded": self.padded,
                "captions": {"joined": self.captions_joined, "missing": self.captions_missing,
                             "empty_fields": dict(self.captions_empty)},
                "skipped_files": self.skipped_files}

    @classmethod
    def from_json(cls, d: dict) -> "Counts":
        cap = d.get("captions", {})
        return cls(d["written"], Counter(d["skipped"]), Counter(d["converted"]), d["padded"], cap.get("joined", 0),
                   cap.get("missing", 0), Counter(cap.get("empty_fields", {})), list(d.get("skipped_files", [])))


def _settings(cfg: MakeDataConfig, source) -> ItemSettings:
    degradation = dataclasses.replace(DegradationConfig(), gt_size=cfg.crop_size, use_usm=cfg.use_usm)
    return ItemSettings(seed=cfg.seed, degradation=degradation, lr_size=cfg.lr_size or cfg.crop_size,
                        hr_only=cfg.hr_only, share_draws=cfg.share_draws, alpha=cfg.alpha,
                        min_pixels=cfg.min_pixels, min_bytes=cfg.min_bytes,
                        tfds=source.spec if isinstance(source, TfdsSource) else None)


def _plan_record(cfg: MakeDataConfig, source, plan: ShardPlan, settings: ItemSettings) -> dict:
    """The settings that decide the output; a rerun must match them to resume."""
    return {"source": source.describe(), "fingerprint": source.fingerprint(), "num_images": plan.num_images,
            "epochs": plan.epochs, "shard_size": plan.shard_size, "num_shards": plan.num_shards, "seed": cfg.seed,
            "crop_size": cfg.crop_size, "lr_size": 0 if cfg.hr_only else settings.lr_size, "hr_only": cfg.hr_only,
            "share_draws": cfg.share_draws, "use_usm": cfg.use_usm, "alpha": cfg.alpha,
            "min_pixels": cfg.min_pixels, "min_bytes": cfg.min_bytes,
            "captions": str(Path(cfg.captions).resolve()) if cfg.captions else None,
            # absent from plans of runs without a cache, which therefore still resume
            # the encoder batch too: XLA's convolutions round differently at another batch size, so a resume with
            # another batch would write a few bfloat16 latents one step apart from the first run's
            **({"cache": {"weights": str(Path(cfg.cache_weights).resolve()),
                          "highlevel_prompt": cfg.highlevel_prompt, "batch": cfg.cache_batch}}
               if cfg.cache_weights else {})}


class OtherSettingsError(UsageError, ValueError):
    """OUT holds a make-data output made with other settings (resume needs the same ones)."""


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj, sort_keys=True)  # a reader (or another host) never sees half a file


def _check_plan(out: Path, wanted: dict, overwrite: bool = False) -> None:
    path = out / PLAN_FILE
    if path.is_file():
        have = json.loads(path.read_text())
        keys = [*wanted, *(k for k in have if k not in wanted)]  # a cache there and none now differs too
        diff = [f"{k}: {have.get(k)!r} there, {wanted.get(k)!r} now" for k in keys if have.get(k) != wanted.get(k)]
        if diff and not overwrite:
            raise OtherSettingsError(f"{out} was made with other settings ({'; '.join(diff)}); rerun with the "
                                    "same settings to resume, pass --overwrite to start over, or write to a new "
                                    "folder")
        if not diff:
            return
        _remove_outputs(out)
    _write_json(path, wanted)


def _remove_outputs(out: Path) -> None:
    """What make-data writes into OUT, and nothing else: records/, stats/, embeddings/, plan.json, summary*.json."""
    for folder in (out / records.RECORDS_DIR, out / STATS_DIR, out / EMBEDDINGS_DIR):
        if folder.is_dir():
            shutil.rmtree(folder)
    for f in [out / PLAN_FILE, *out.glob("summary*.json")]:
        f.unlink(missing_ok=True)


def _tasks(plan: ShardPlan, shards: list[int], source):
    for shard in shards:
        for flat in plan.shard_items(shard):
            epoch, index = plan.item(flat)
            yield ItemTask(flat, epoch, index, source.reference(index), source.origin(index),
                           source.duplicate_of(index))


def _record(res: ItemResult, source, store, counts: Counts, moments=None) -> records.PairRecord:
    image_id = source.image_id(res.task.index)
    captions = Captions()
    if store is not None:
        found = lookup(store, image_id, res.task.epoch)
        if found is None:
            counts.captions_missing += 1
        else:
            counts.captions_joined += 1
            captions = found
            counts.captions_empty.update(found.empty_fields())
    return records.PairRecord(id=image_id, epoch=res.task.epoch, source=res.task.origin, hr_png=res.hr_png,
                              lr_png=res.lr_png, captions=captions, meta=res.meta, latent_moments=moments)


def _write_shard(path: Path, stats_path: Path, items: int, results, source, store, cfg: MakeDataConfig,
                 bar, cacher=None) -> Counts:
    from array_record.python.array_record_module import ArrayRecordWriter

    tmp = path.with_name(f".{path.name}.incomplete")  # not a shard name: readers never pick it up
    writer = ArrayRecordWriter(str(tmp), records.WRITER_OPTIONS)
    counts = Counts()
    try:
        for res, moments in _with_moments(results, items, cacher):
            bar.update(1)
            if res.skip is not None:
                if res.skip == CORRUPT and cfg.on_error == "fail":
                    raise ImageDecodeError(res.message)
                counts.skipped[res.skip] += 1
                if len(counts.skipped_files) < MAX_LISTED_SKIPS:
                    counts.skipped_files.append({"source": res.task.origin, "epoch": res.task.epoch,
                                                 "reason": res.skip, "message": res.message})
                continue
            rec = _record(res, source, store, counts, moments)
            writer.write(records.serialize(rec))
            if cacher is not None:
                cacher.add(rec.captions)
            counts.written += 1
            counts.converted.update(res.notes)
            counts.padded += res.padded
    finally:
        writer.close()
    if cacher is not None:  # the shard's embeddings exist before the shard does
        cacher.finish(path.name.removesuffix(records.SHARD_SUFFIX))
    _write_json(stats_path, counts.to_json())
    os.replace(tmp, path)
    return counts


def _with_moments(results, items: int, cacher):
    """(result, posterior moments or None) for the next ``items`` results; with a cache the VAE encodes them in
    batches of ``cacher.batch_size``."""
    if cacher is None:
        for _ in range(items):
            yield next(results), None
        return
    for start in range(0, items, cacher.batch_size):
        chunk = [next(results) for _ in range(min(cacher.batch_size, items - start))]
        yield from zip(chunk, cacher.moments(chunk))


def _summary_path(out: Path, cfg: MakeDataConfig) -> Path:
    if cfg.num_hosts == 1:
        return out / "summary.json"
    return out / f"summary-host{cfg.host_index:03d}-of-{cfg.num_hosts:03d}.json"


def make_data(cfg: MakeDataConfig) -> dict:
    """Run (or resume) make-data for this host; returns the summary, also written as JSON (see module doc)."""
    start = time.perf_counter()
    source = open_source(cfg.source, cfg.tfds_split, cfg.tfds_data_dir, cfg.tfds_image_key)
    if len(source) == 0:
        raise FileNotFoundError(f"no images found in {source.describe()} (extensions: png jpg jpeg webp bmp tif)")
    settings = _settings(cfg, source)
    plan = ShardPlan(len(source), cfg.epochs, cfg.shard_size)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, _plan_record(cfg, source, plan, settings), cfg.overwrite)
    folder = out / records.RECORDS_DIR
    folder.mkdir(exist_ok=True)
    (out / STATS_DIR).mkdir(exist_ok=True)
    store = read_caption_jsonl(cfg.captions) if cfg.captions else None
    cacher = None
    if cfg.cache_weights:  # loaded before any work: a bad checkpoint fails in seconds
        from xpsr_jax.data.cache_encoders import CacheEncoders
        from xpsr_jax.data.latent_cache import ShardCacher

        cacher = ShardCacher(CacheEncoders.load(cfg.cache_weights, cfg.cache_batch), out, cfg.highlevel_prompt)

    mine = plan.host_shards(cfg.num_hosts, cfg.host_index)
    name = partial(records.shard_name, count=plan.num_shards)
    pending = [s for s in mine if not (folder / name(s)).is_file()]
    run = Counts()
    total_items = sum(len(plan.shard_items(s)) for s in pending)
    desc = f"make-data host {cfg.host_index}" + (" + encoder cache" if cacher else "")
    bar = tqdm(total=total_items, unit="img", desc=desc, disable=not cfg.progress)
    pool = None
    try:
        tasks = _tasks(plan, pending, source)
        if cfg.workers > 1:
            pool = mp.get_context("spawn").Pool(cfg.workers, initializer=init_worker, initargs=(settings,))
            results = pool.imap(make_item_in_worker, tasks, chunksize=1)
        else:
            results = (make_item(t, settings) for t in tasks)
        for shard in pending:
            run.add(_write_shard(folder / name(shard), out / STATS_DIR / f"{name(shard)}.json",
                                 len(plan.shard_items(shard)), results, source, store, cfg, bar, cacher))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()

    totals, complete = Counts(), []
    for s in mine:
        stats = out / STATS_DIR / f"{name(s)}.json"
        if (folder / name(s)).is_file() and stats.is_file():
            totals.add(Counts.from_json(json.loads(stats.read_text())))
    all_done = all((folder / name(s)).is_file() for s in range(plan.num_shards))
    # a dataset of 0 pairs is never marked complete: training on it would fail much later, far from the cause
    all_done = all_done and _dataset_pairs(out, plan, name) > 0
    metadata = str(records.write_tfds_metadata(folder)) if all_done else None
    summary = {
        "out": str(out), "source": source.describe(), "images": plan.num_images, "epochs": plan.epochs,
        "items": plan.num_items, "shards": plan.num_shards, "host": [cfg.host_index, cfg.num_hosts],
        "host_shards": len(mine), "shards_written": len(pending), "shards_already_complete": len(mine) - len(pending),
        "this_run": run.to_json(), "host_totals": totals.to_json(), "dataset_complete": all_done,
        "tfds_metadata": metadata, "captions": cfg.captions, "seconds": round(time.perf_counter() - start, 3),
        "cache": ({"weights": cfg.cache_weights, "embeddings": str(out / EMBEDDINGS_DIR),
                   "highlevel_prompt": cfg.highlevel_prompt} if cfg.cache_weights else None),
    }
    _write_json(_summary_path(out, cfg), summary)
    summary["summary_file"] = str(_summary_path(out, cfg))
    if totals.written == 0 and mine:
        for s in mine:  # empty shards are no finished work: a rerun (after fixing the images) redoes them
            (folder / name(s)).unlink(missing_ok=True)
            (out / STATS_DIR / f"{name(s)}.json").unlink(missing_ok=True)
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(totals.skipped.items())) or "no pair was written"
        raise NothingDoneError(f"0 pairs written from {source.describe()}: every image was skipped ({reasons}); "
                               f"see {summary['summary_file']}")
    return summary


def _dataset_pairs(out: Path, plan: ShardPlan, name) -> int:
    """Pairs in every shard of the dataset (all hosts), from the shards' stats files."""
    total = 0
    for s in range(plan.num_shards):
        stats = out / STATS_DIR / f"{name(s)}.json"
        if stats.is_file():
            total += Counts.from_json(json.loads(stats.read_text())).written
    return total


def format_summary(s: dict) -> str:
    """A few readable lines for the terminal; the JSON file has everything."""
    run, tot = s["this_run"], s["host_totals"]
    lines = [f"make-data: {s['images']} images x {s['epochs']} epochs = {s['items']} items in {s['shards']} shards "
             f"(host {s['host'][0]} of {s['host'][1]}: {s['host_shards']} shards)",
             f"  this run: {s['shards_written']} shards written, {s['shards_already_complete']} already complete; "
             f"{run['written']} pairs written, {run['skipped_total']} skipped {run['skipped'] or ''}".rstrip(),
             f"  this host in total: {tot['written']} pairs, {tot['skipped_total']} skipped, "
             f"converted {tot['converted'] or '{}'}, padded {tot['padded']}"]
    if s["captions"]:
        c = tot["captions"]
        lines.append(f"  captions: {c['joined']} joined, {c['missing']} missing (empty prompts), "
                     f"empty fields {c['empty_fields'] or '{}'}")
    if s.get("cache"):
        lines.append(f"  cached: HR latents in the records, prompt embeddings in {s['cache']['embeddings']} "
                     f"(encoders of {s['cache']['weights']})")
    for f in run["skipped_files"][:5]:
        lines.append(f"  skipped {f['reason']}: {f['message']}")
    lines.append("  dataset complete; tfds metadata in " + s["tfds_metadata"] if s["dataset_complete"]
                 else "  dataset incomplete: other hosts' shards are missing (or rerun to resume)")
    lines.append(f"  summary: {s['summary_file']} ({s['seconds']} s)")
    return "\n".join(lines)

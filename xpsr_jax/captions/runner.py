"""The caption pass over a folder: which images this shard owns, which are still to do, and the batch loop.

The pass is resumable (ids with a record in the store, any shard of it, are skipped) and splits across
processes or hosts by index: the sorted list of ids is dealt round-robin, id ``k`` to shard ``k % n``, so every
process that sees the same folder agrees on the split without talking to the others. An image that cannot be
read is reported and left without a record (so a later run tries it again); it never stops the others.
"""

from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .images import list_images, load_rgb
from .llava import DEFAULT_MAX_LENGTH, DEFAULT_MODEL
from .store import CaptionStore
from xpsr_jax.errors import XPSRError
from xpsr_jax.paths import AnyPath


@dataclass
class CaptionJob:
    """What to caption and how; the command line fills one of these."""

    images: Path
    out: AnyPath  # a local store file or a gs:// object (see store.CaptionStore)
    hr_dir: Path | None = None
    model: str = DEFAULT_MODEL
    lowlevel_model: str | None = None  # None: the same model as the high-level pass
    batch_size: int = 8
    num_shards: int = 1
    shard_index: int = 0
    dtype: str = "auto"
    device: str | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    progress: bool = True


@dataclass
class Work:
    """This shard's share of a folder: ids still to caption with their files, and what was found wrong."""

    pending: list[tuple[str, Path, Path | None]]
    already_done: int
    problems: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class CaptionResult:
    """What a run did; ``problems`` are (id or file, reason) pairs that made it exit non-zero."""

    captioned: int
    already_done: int
    problems: list[tuple[str, str]]
    written_to: AnyPath


def _owned(ids: list[str], job: CaptionJob) -> set[str]:
    return {rid for k, rid in enumerate(sorted(ids)) if k % job.num_shards == job.shard_index}


def plan(job: CaptionJob, store: CaptionStore) -> Work:
    """The ids this shard still has to caption (sorted), skipping those with a record in ``store``."""
    images, duplicates = list_images(job.images)
    owned = _owned(list(images) + list(duplicates), job)
    hr_images: dict[str, Path] = {}
    hr_duplicates: dict[str, list[Path]] = {}
    problems: list[tuple[str, str]] = []
    if job.hr_dir is not None:
        hr_images, hr_duplicates = list_images(job.hr_dir)
        for rid, paths in hr_duplicates.items():
            if rid in owned:
                problems.append((rid, "several HR files share this id: " + ", ".join(p.name for p in paths)))
    for rid, paths in duplicates.items():
        if rid in owned:
            problems.append((rid, "several files share this id: " + ", ".join(p.name for p in paths)))
    done = store.done_ids()
    pending, already = [], 0
    for rid in sorted(owned & set(images)):
        if rid in done:
            already += 1
        elif job.hr_dir is not None and rid not in hr_images:
            if rid not in hr_duplicates:  # already reported above
                problems.append((rid, f"no HR image with this id in {job.hr_dir}"))
        else:
            pending.append((rid, images[rid], hr_images.get(rid)))
    return Work(pending, already, problems)


class ModelLoadError(XPSRError, RuntimeError):
    """A model id that is neither a loadable local folder nor reachable on the hub."""


def _load(model_id: str, job: CaptionJob):
    from .llava import load_llava

    try:
        return load_llava(model_id, device=job.device, dtype=job.dtype)
    except (OSError, ValueError) as exc:  # transformers' "not found / not a LLaVA folder" errors
        raise ModelLoadError(f"{model_id}: {exc}") from exc


def load_captioners(job: CaptionJob):
    """The high- and low-level captioners; one model is loaded when both passes use the same id."""
    from .llava import highlevel_captioner, lowlevel_captioner

    high = _load(job.model, job)
    low = high
    if job.lowlevel_model and job.lowlevel_model != job.model:
        low = _load(job.lowlevel_model, job)
    return highlevel_captioner(high, job.max_length), lowlevel_captioner(low, job.max_length)


def _run_meta(job: CaptionJob, high, low, work: Work) -> dict:
    return {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "images": str(job.images),
        "hr_dir": str(job.hr_dir) if job.hr_dir is not None else None,
        "shard": [job.shard_index, job.num_shards],
        "batch_size": job.batch_size,
        "to_caption": len(work.pending),
        "highlevel": high.describe(),
        "lowlevel": low.describe(),
    }


def _load_batch(batch, problems):
    """Decode a batch's images; unreadable ones go to ``problems`` and drop out of the batch."""
    loaded = []
    for rid, lr_path, hr_path in batch:
        decoded = []
        for path in (lr_path, hr_path):
            if path is None:
                continue
            try:
                decoded.append(load_rgb(path))
            except Exception as exc:  # any decoding failure: report it, caption the rest
                problems.append((rid, f"cannot read {path}: {type(exc).__name__}: {exc}"))
                break
        else:
            loaded.append((rid, decoded[0], decoded[1] if hr_path is not None else None))
    return loaded


def caption_folder(job: CaptionJob, captioners=None) -> CaptionResult:
    """Caption every image of ``job.images`` this shard owns and has not captioned yet.

    ``job.images`` is a folder of images, or a make-data output whose records are captioned pair by pair
    (``records.RecordPairs``). ``captioners`` (high, low) may be passed to reuse loaded models; otherwise they are
    loaded only when there is work to do, so a finished run costs no model load.
    """
    from tqdm import tqdm

    from .records import RecordPairs, is_records_folder

    if job.batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    shard = None if job.num_shards == 1 else job.shard_index
    store = CaptionStore.open(job.out, shard_index=shard, num_shards=None if shard is None else job.num_shards)
    if is_records_folder(job.images):
        if job.hr_dir is not None:
            raise ValueError("the records hold each pair's HR crop already; --hr-dir is for image folders")
        records = RecordPairs(job.images, job.num_shards, job.shard_index)
        work = Work(records.pending, 0, records.problems)
        done = store.done_ids()
        load = lambda batch, problems: records.load_batch(batch, done)  # noqa: E731
    else:
        records, work, load = None, plan(job, store), _load_batch
    problems = work.problems
    captioned, meta_written = 0, False
    with store, tqdm(total=len(work.pending), unit="img", desc="caption", disable=not job.progress) as bar:
        for start in range(0, len(work.pending), job.batch_size):
            batch = work.pending[start:start + job.batch_size]
            loaded = load(batch, problems)
            if loaded:
                if not meta_written:  # first real work: load the models (unless given), record the settings
                    captioners = captioners or load_captioners(job)
                    store.add_run_meta(_run_meta(job, *captioners, work))
                    meta_written = True
                captioned += _caption_batch(loaded, *captioners, store)
            bar.update(len(batch))
    already = work.already_done + (records.already_done if records is not None else 0)
    return CaptionResult(captioned, already, problems, store.write_path)


def _caption_batch(loaded, high, low, store: CaptionStore) -> int:
    """Caption LR (and HR) images of one batch in one padded batch per model, as XPSR did, and store them."""
    images = [lr for _, lr, _ in loaded] + [hr for _, _, hr in loaded if hr is not None]
    highlevel = high.caption(images)
    lowlevel = low.caption(images)
    n = len(loaded)
    hr_index = n
    for k, (rid, _, hr) in enumerate(loaded):
        record = {"id": rid, "highlevel": highlevel[k], "lowlevel": lowlevel[k]}
        if hr is not None:
            record["highlevel_hr"] = highlevel[hr_index]
            record["lowlevel_hr"] = lowlevel[hr_index]
            hr_index += 1
        store.add(record)
    return n

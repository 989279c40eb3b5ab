"""The caption store: one JSON object per line, keyed by image id, written append-only.

Schema of a record (every field except ``id`` may be absent or empty)::

    {"id": "sub/0001",            # file stem relative to the image root, "/"-separated
     "highlevel": "...",          # content caption of the image itself (LR when captioning pairs)
     "lowlevel": "...",           # quality description of the image itself
     "highlevel_hr": "...",       # the same two for the paired HR image (``--hr-dir``)
     "lowlevel_hr": "..."}

In the official folder layout these are ``highlevel_prompt/``, ``lowlevel_prompt_q/``, ``highlevel_prompt_GT/``
and ``lowlevel_prompt_q_GT/`` (see :mod:`xpsr_jax.captions.official`).

Durability: a record is one ``write`` of one line, flushed and fsynced, so a crash loses at most the line being
written; a partially written last line is ignored on read and cut off before the next append. When an id
appears more than once, later lines update the fields they carry (and :meth:`CaptionStore.add` writes whole
updated records, so "the last line wins" reads the same).

Sharding: shard ``i`` of ``n`` appends to ``OUT`` with a ``-shard-i-of-n`` suffix before the extension
(``captions.jsonl`` -> ``captions-shard-0-of-4.jsonl``). Opening ``OUT`` reads it together with every shard file
beside it, so readers never need an explicit merge; :func:`merge_shards` folds the shards into ``OUT`` once all
writers are done. Run metadata (models, prompts, generation configs) lives in the sidecar ``OUT.meta.json``.

Buckets: ``OUT`` may be a ``gs://`` object, its shards and sidecar beside it; it is read the same way. A GCS object
cannot be appended to, so a writer appends to a local staging copy of its write file (seeded with the object's
bytes) and uploads that file whole at the first record added :attr:`CaptionStore.upload_seconds` (60) seconds or
more after the previous upload, after every :attr:`CaptionStore.upload_records` records when that is set, and on
close; its ``.meta.json`` goes up after it. A crash therefore loses the records added since the last upload (at
most ``upload_seconds`` worth of adding them; a rerun captions them again), never part of one: an object appears
only once its upload completes. Each shard uploads its own object, so shards on several hosts share one bucket
as they share a folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import IO, Iterator

from xpsr_jax.files import strict_json_dumps
from xpsr_jax.paths import AnyPath, as_path, fresh, replacing, upload_file

FIELDS = ("highlevel", "lowlevel", "highlevel_hr", "lowlevel_hr")
META_FORMAT = "xpsr-jax-captions"
META_VERSION = 1


def meta_path(path: str | os.PathLike) -> AnyPath:
    """The sidecar metadata file of a store file: ``OUT.meta.json``."""
    return as_path(str(path) + ".meta.json")


def shard_path(path: str | os.PathLike, index: int, count: int) -> AnyPath:
    """The file shard ``index`` of ``count`` writes: the suffix goes before the extension."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    path = as_path(path)
    return path.with_name(f"{path.stem}-shard-{index}-of-{count}{path.suffix}")


def shard_paths(path: str | os.PathLike) -> list[AnyPath]:
    """Shard files of ``path`` that exist, ordered by (count, index)."""
    path = fresh(path)
    pattern = re.compile(re.escape(path.stem) + r"-shard-(\d+)-of-(\d+)" + re.escape(path.suffix))
    found = []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            m = pattern.fullmatch(candidate.name)
            if m and candidate.is_file():
                found.append(((int(m.group(2)), int(m.group(1))), candidate))
    return [p for _, p in sorted(found)]


def check_record(record: dict) -> dict:
    """A copy of ``record`` with a valid id and string fields; raises ValueError otherwise."""
    if not isinstance(record, dict):
        raise ValueError(f"a caption record is a dict, got {type(record).__name__}")
    rid = record.get("id")
    if not isinstance(rid, str) or not rid:
        raise ValueError(f"a caption record needs a non-empty string id, got {rid!r}")
    record = {k: v for k, v in record.items() if not (k in FIELDS and v is None)}  # null reads as absent
    for field in FIELDS:
        if field in record and not isinstance(record[field], str):
            raise ValueError(f"{rid}: field {field!r} must be a string, got {type(record[field]).__name__}")
    return record


def read_records(path: str | os.PathLike) -> Iterator[dict]:
    """Records of one JSONL file (local or gs://) in file order.

    An unterminated last line that does not parse is the trace of an interrupted write and is dropped
    silently; a broken line anywhere else is skipped with a warning (its image is captioned again on resume).
    """
    data = fresh(path).read_bytes()
    lines = data.split(b"\n")  # not splitlines(): U+2028 and friends may sit inside a caption
    last = len(lines) - 1
    for number, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            yield check_record(json.loads(raw.decode("utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:
            if number == last:  # no newline after it: cut short by a crash
                continue
            warnings.warn(f"{path}:{number + 1}: skipping a broken caption record ({exc})", stacklevel=2)


def _repair_tail(path: Path) -> None:
    """Make ``path`` end with a newline before appending: terminate a complete last record, cut a partial one."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        head, newline, tail = data.rpartition(b"\n")
        try:
            check_record(json.loads(tail.decode("utf-8")))
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        except (ValueError, UnicodeDecodeError):
            f.truncate(len(head) + len(newline))


def _write_json(path: AnyPath, obj) -> None:
    text = strict_json_dumps(obj) + "\n"  # built first: a value JSON cannot hold leaves the file as it was
    with replacing(path) as f:
        f.write(text.encode("utf-8"))


def read_meta(path: str | os.PathLike) -> dict:
    """The sidecar metadata of a store file (an empty skeleton when there is none)."""
    mpath = fresh(meta_path(path))
    if mpath.is_file():
        return json.loads(mpath.read_text(encoding="utf-8"))
    return {"format": META_FORMAT, "version": META_VERSION, "fields": list(FIELDS), "runs": []}


def append_run_meta(path: str | os.PathLike, run: dict) -> None:
    """Add one run's description (models, prompts, generation configs, ...) to ``OUT.meta.json``."""
    meta = read_meta(path)
    meta.setdefault("runs", []).append(run)
    _write_json(meta_path(path), meta)


class _Staged:
    """The local copy a bucket store appends to, seeded with the object's bytes and uploaded whole (GCS objects
    cannot be appended to); the metadata sidecar, when this process added a run to it, goes up after it."""

    def __init__(self, target: AnyPath):
        self.target = target = fresh(target)
        self._folder = tempfile.TemporaryDirectory(prefix="xpsr-captions-")
        self.local = Path(self._folder.name) / target.name
        self.local.write_bytes(target.read_bytes() if target.is_file() else b"")
        self.meta: dict | None = None
        self._records = 0  # appended since the last upload
        self._meta_changed = False
        self._uploaded_at = time.monotonic()

    def added(self, seconds: float | None, records: int | None) -> None:
        """Count one record appended to :attr:`local`; upload once ``records`` are pending or ``seconds`` have
        passed since the last upload."""
        self._records += 1
        if ((records is not None and self._records >= records)
                or (seconds is not None and time.monotonic() - self._uploaded_at >= seconds)):
            self.upload()

    def add_run(self, run: dict) -> None:
        if self.meta is None:
            self.meta = read_meta(self.target)
        self.meta.setdefault("runs", []).append(run)
        self._meta_changed = True

    def upload(self) -> None:
        """Upload what changed since the last upload: the write file, then its sidecar."""
        if self._records:
            upload_file(self.local, self.target)
        if self._meta_changed:
            _write_json(meta_path(self.target), self.meta)
        self._records, self._meta_changed, self._uploaded_at = 0, False, time.monotonic()

    def close(self) -> None:
        try:
            self.upload()
        finally:
            self._folder.cleanup()


class CaptionStore:
    """Captions keyed by image id, read from a store file and its shards, appended to one of them.

    Use :meth:`open`; records are kept in memory (a caption is a few hundred bytes, a million images fit). A store
    in a bucket uploads its write file every :attr:`upload_seconds` / :attr:`upload_records` and on :meth:`close`
    (see the module docstring); set them on the class or on one store before its first :meth:`add`.
    """

    #: a bucket store uploads at the first record added this many seconds after its last upload (None: never)
    upload_seconds: float | None = 60.0
    #: ... and once this many records wait for an upload (None: no limit; every upload sends the whole file)
    upload_records: int | None = None

    def __init__(self, path: AnyPath, write_path: AnyPath, records: dict[str, dict]):
        self.path = path
        self.write_path = write_path
        self._records = records
        self._file = None
        self._staged: _Staged | None = None  # a bucket store's local copy, from its first add or run meta

    @classmethod
    def open(cls, path: str | os.PathLike, *, shard_index: int | None = None, num_shards: int | None = None,
             merge_shards: bool = True) -> "CaptionStore":
        """Read ``path`` (local or gs://; with ``merge_shards``, also every shard file beside it); appends go to
        ``path``, or to its shard file when ``shard_index``/``num_shards`` are given."""
        path = fresh(path)
        if (shard_index is None) != (num_shards is None):
            raise ValueError("give both shard_index and num_shards, or neither")
        write_path = path if num_shards is None else shard_path(path, shard_index, num_shards)
        records: dict[str, dict] = {}
        sources = [path] + (shard_paths(path) if merge_shards else [])
        if write_path not in sources:
            sources.append(write_path)
        for source in sources:
            if source.is_file():
                for record in read_records(source):
                    records.setdefault(record["id"], {}).update(record)
        return cls(path, write_path, records)

    # -- reading -------------------------------------------------------------------------------------------------
    def get(self, image_id: str) -> dict | None:
        """The record of ``image_id`` (a copy), or None."""
        record = self._records.get(image_id)
        return dict(record) if record is not None else None

    def done_ids(self) -> set[str]:
        """Ids that have a record."""
        return set(self._records)

    def records(self) -> list[dict]:
        """All records, sorted by id."""
        return [dict(self._records[k]) for k in sorted(self._records)]

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records())

    # -- writing -------------------------------------------------------------------------------------------------
    def add(self, record: dict) -> None:
        """Append one record and make it durable (in a bucket: at the next upload); fields it carries update an
        existing record of the same id.

        The line written is the whole updated record, so a reader that lets the last line of an id win sees
        the same captions as one that merges fields.
        """
        update = check_record(record)
        record = {**self._records.get(update["id"], {}), **update}
        if self._file is None:
            self._file = self._open_for_append()
        line = strict_json_dumps(record, indent=None) + "\n"
        self._file.write(line.encode("utf-8"))  # one write per record: a crash cuts at most this line
        self._file.flush()
        os.fsync(self._file.fileno())
        self._records[record["id"]] = record
        if self._staged is not None:
            self._staged.added(self.upload_seconds, self.upload_records)

    def _open_for_append(self) -> IO[bytes]:
        """The write file (a bucket store's staged copy) opened for appending, a torn last line repaired first."""
        local = self.write_path if isinstance(self.write_path, Path) else self._staging().local
        local.parent.mkdir(parents=True, exist_ok=True)
        _repair_tail(local)
        return open(local, "ab")

    def _staging(self) -> _Staged:
        if self._staged is None:
            self._staged = _Staged(self.write_path)
        return self._staged

    def add_run_meta(self, run: dict) -> None:
        """Record a run's settings in the metadata sidecar of the file this store writes (in a bucket: uploaded
        after the records, so the sidecar never describes records that are not there yet)."""
        if isinstance(self.write_path, Path):
            append_run_meta(self.write_path, run)
        else:
            self._staging().add_run(run)

    def close(self) -> None:
        """Close the write file; a bucket store uploads what is pending and removes its staging copy."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._staged is not None:
            staged, self._staged = self._staged, None
            staged.close()

    def __enter__(self) -> "CaptionStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_store(path: str | os.PathLike, records: list[dict]) -> None:
    """Replace ``path`` with ``records`` (sorted by id) in one atomic step (in a bucket: one upload)."""
    with replacing(as_path(path)) as f:
        for record in sorted((check_record(r) for r in records), key=lambda r: r["id"]):
            f.write((strict_json_dumps(record, indent=None) + "\n").encode("utf-8"))


def merge_shards(path: str | os.PathLike, *, remove: bool = True) -> int:
    """Fold every shard file of ``path`` (and their metadata) into ``path``; returns the number of records.

    Run it once all shard writers have finished: a shard still being written would lose what comes after.
    The merged file is written (in a bucket: uploaded) before any shard is removed, so an interruption loses
    nothing.
    """
    path = fresh(path)
    shards = shard_paths(path)
    store = CaptionStore.open(path)
    write_store(path, store.records())
    meta = read_meta(path)
    for shard in shards:
        shard_meta = read_meta(shard)
        meta.setdefault("runs", []).extend(shard_meta.get("runs", []))
    if shards or meta_path(path).is_file():
        _write_json(meta_path(path), meta)
    if remove:
        for shard in shards:
            shard.unlink(missing_ok=True)
            meta_path(shard).unlink(missing_ok=True)
    return len(store)


def load_captions(path: str | os.PathLike) -> dict[str, dict]:
    """All records of a store (shards included, local or gs://) as ``{id: record}``; the reader for data
    builders."""
    return {r["id"]: r for r in CaptionStore.open(path).records()}

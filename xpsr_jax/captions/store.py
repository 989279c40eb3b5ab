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
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterator

from xpsr_jax.files import atomic_open, atomic_write_json, strict_json_dumps

FIELDS = ("highlevel", "lowlevel", "highlevel_hr", "lowlevel_hr")
META_FORMAT = "xpsr-jax-captions"
META_VERSION = 1


def meta_path(path: str | os.PathLike) -> Path:
    """The sidecar metadata file of a store file: ``OUT.meta.json``."""
    return Path(str(path) + ".meta.json")


def shard_path(path: str | os.PathLike, index: int, count: int) -> Path:
    """The file shard ``index`` of ``count`` writes: the suffix goes before the extension."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    path = Path(path)
    return path.with_name(f"{path.stem}-shard-{index}-of-{count}{path.suffix}")


def shard_paths(path: str | os.PathLike) -> list[Path]:
    """Shard files of ``path`` that exist, ordered by (count, index)."""
    path = Path(path)
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
    """Records of one JSONL file in file order.

    An unterminated last line that does not parse is the trace of an interrupted write and is dropped
    silently; a broken line anywhere else is skipped with a warning (its image is captioned again on resume).
    """
    data = Path(path).read_bytes()
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


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj)  # the temporary name is per process: two mergers never share one


def read_meta(path: str | os.PathLike) -> dict:
    """The sidecar metadata of a store file (an empty skeleton when there is none)."""
    mpath = meta_path(path)
    if mpath.is_file():
        return json.loads(mpath.read_text(encoding="utf-8"))
    return {"format": META_FORMAT, "version": META_VERSION, "fields": list(FIELDS), "runs": []}


def append_run_meta(path: str | os.PathLike, run: dict) -> None:
    """Add one run's description (models, prompts, generation configs, ...) to ``OUT.meta.json``."""
    meta = read_meta(path)
    meta.setdefault("runs", []).append(run)
    _write_json_atomic(meta_path(path), meta)


class CaptionStore:
    """Captions keyed by image id, read from a store file and its shards, appended to one of them.

    Use :meth:`open`; records are kept in memory (a caption is a few hundred bytes, a million images fit).
    """

    def __init__(self, path: Path, write_path: Path, records: dict[str, dict]):
        self.path = path
        self.write_path = write_path
        self._records = records
        self._file = None

    @classmethod
    def open(cls, path: str | os.PathLike, *, shard_index: int | None = None, num_shards: int | None = None,
             merge_shards: bool = True) -> "CaptionStore":
        """Read ``path`` (and, with ``merge_shards``, every shard file beside it); appends go to ``path``, or
        to its shard file when ``shard_index``/``num_shards`` are given."""
        path = Path(path)
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
        """Append one record and make it durable; fields it carries update an existing record of the same id.

        The line written is the whole updated record, so a reader that lets the last line of an id win sees
        the same captions as one that merges fields.
        """
        update = check_record(record)
        record = {**self._records.get(update["id"], {}), **update}
        if self._file is None:
            self.write_path.parent.mkdir(parents=True, exist_ok=True)
            _repair_tail(self.write_path)
            self._file = open(self.write_path, "ab")
        line = strict_json_dumps(record, indent=None) + "\n"
        self._file.write(line.encode("utf-8"))  # one write per record: a crash cuts at most this line
        self._file.flush()
        os.fsync(self._file.fileno())
        self._records[record["id"]] = record

    def add_run_meta(self, run: dict) -> None:
        """Record a run's settings in the metadata sidecar of the file this store writes."""
        append_run_meta(self.write_path, run)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "CaptionStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_store(path: str | os.PathLike, records: list[dict]) -> None:
    """Replace ``path`` with ``records`` (sorted by id) in one atomic step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:  # the temporary name is per process: two mergers never share one
        for record in sorted((check_record(r) for r in records), key=lambda r: r["id"]):
            f.write((strict_json_dumps(record, indent=None) + "\n").encode("utf-8"))


def merge_shards(path: str | os.PathLike, *, remove: bool = True) -> int:
    """Fold every shard file of ``path`` (and their metadata) into ``path``; returns the number of records.

    Run it once all shard writers have finished: a shard still being written would lose what comes after.
    The merged file is written before any shard is removed, so an interruption loses nothing.
    """
    path = Path(path)
    shards = shard_paths(path)
    store = CaptionStore.open(path)
    write_store(path, store.records())
    meta = read_meta(path)
    for shard in shards:
        shard_meta = read_meta(shard)
        meta.setdefault("runs", []).extend(shard_meta.get("runs", []))
    if shards or meta_path(path).is_file():
        _write_json_atomic(meta_path(path), meta)
    if remove:
        for shard in shards:
            shard.unlink(missing_ok=True)
            meta_path(shard).unlink(missing_ok=True)
    return len(store)


def load_captions(path: str | os.PathLike) -> dict[str, dict]:
    """All records of a store (shards included) as ``{id: record}``; the reader for data builders."""
    return {r["id"]: r for r in CaptionStore.open(path).records()}

"""The training-pair record: its fields, PNG coding, shard names and the tfds view of a records folder.

A record is a ``tf.train.Example`` serialised by tfds's own feature code (no TensorFlow needed), so the shards that
``make-data`` writes are a tfds dataset as they stand: ``tfds_builder(OUT).as_data_source()`` reads them. Images
are PNG bytes rather than tfds ``Image`` features because encoding those needs TensorFlow.

======================  ======  =========================================================================
field                   type    content
======================  ======  =========================================================================
id                      text    image id: path relative to the HR folder, no extension (``a/b/0001``)
epoch                   int32   which degraded copy (``--epochs``)
source                  text    where the HR came from (a path, or ``tfds:name:split[index]``)
hr                      bytes   PNG, RGB 8-bit: the 512² HR crop, USM-sharpened (the whole HR image for HR-only
                                records)
lr                      bytes   PNG, RGB 8-bit: the degraded LR, bicubic-upsampled to the HR size or at 1/4;
                                empty for HR-only records (the pipeline then degrades online)
highlevel, lowlevel,    text    prompts from the caption store (``caption_lookup``); ``""`` when absent
highlevel_hr,
lowlevel_hr
meta                    text    JSON: seed, original size, decode notes, crop box, degradation draws
latent_moments          bytes   ``make-data --cache-latents``: the VAE posterior of the HR crop, (H/8, W/8, 2C)
                                mean then log-variance along the last axis, bfloat16 (``encode_moments``);
                                empty (or absent, in records of older versions) otherwise
======================  ======  =========================================================================

Shards are ``records/train-00000-of-000NN.array_record`` (ArrayRecord, one record per chunk for random access);
``dataset_info.json`` + ``features.json`` beside them (written once every shard exists) make the folder a tfds
dataset.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import ml_dtypes
import numpy as np

from xpsr_jax import paths
from xpsr_jax.data.caption_lookup import CAPTION_FIELDS, Captions

DATASET_NAME = "xpsr_pairs"
DATASET_VERSION = "1.0.0"
SPLIT = "train"
RECORDS_DIR = "records"
SHARD_SUFFIX = ".array_record"
WRITER_OPTIONS = "group_size:1"  # one record per chunk: random access reads only what it needs
PNG_COMPRESSION = 1  # zlib level: level 3 saves ~2 % of the size and costs ~60 % more encode time
_SHARD_RE = re.compile(r"^(?P<split>[a-z_]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.array_record$")


@dataclass
class PairRecord:
    """One training example before serialisation (see the module docstring for the fields)."""

    id: str
    epoch: int
    source: str
    hr_png: bytes
    lr_png: bytes = b""
    captions: Captions = field(default_factory=Captions)
    meta: dict = field(default_factory=dict)
    latent_moments: np.ndarray | None = None  # (H/8, W/8, 2C) posterior of the HR crop, when cached


@functools.cache
def features():
    """The tfds ``FeaturesDict`` of a record (tfds is imported here, on first use)."""
    import tensorflow_datasets as tfds

    text, blob = tfds.features.Text, functools.partial(tfds.features.Tensor, shape=(), dtype=np.object_)
    spec = {"id": text(), "epoch": tfds.features.Scalar(dtype=np.int32), "source": text(),
            "hr": blob(), "lr": blob(), "meta": text(), "latent_moments": blob()}
    spec.update({name: text() for name in CAPTION_FIELDS})
    return tfds.features.FeaturesDict(spec)


def encode_png(img: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION,
                                                                          PNG_COMPRESSION])
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {img.shape}")
    return buf.tobytes()


def decode_png(data: bytes, name: str = "record") -> np.ndarray:
    """PNG bytes written by ``encode_png`` -> (H, W, 3) uint8 RGB (OpenCV releases the GIL while decoding)."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError(f"{name}: the stored PNG cannot be decoded")
    return np.ascontiguousarray(arr[..., ::-1])


def encode_moments(moments: np.ndarray) -> bytes:
    """(h, w, 2C) posterior moments -> bytes: a ``.npy`` of their bfloat16 bit patterns (NumPy has no bfloat16)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(np.asarray(moments).astype(ml_dtypes.bfloat16)).view(np.uint16))
    return buf.getvalue()


def decode_moments(data: bytes) -> np.ndarray:
    """Bytes from ``encode_moments`` -> the (h, w, 2C) bfloat16 array."""
    return np.load(io.BytesIO(data)).view(ml_dtypes.bfloat16)


def serialize(rec: PairRecord) -> bytes:
    """``PairRecord`` -> the bytes of one ArrayRecord entry."""
    ex = {"id": rec.id, "epoch": int(rec.epoch), "source": rec.source, "hr": rec.hr_png, "lr": rec.lr_png,
          "meta": json.dumps(rec.meta, sort_keys=True),
          "latent_moments": b"" if rec.latent_moments is None else encode_moments(rec.latent_moments)}
    ex.update({name: getattr(rec.captions, name) for name in CAPTION_FIELDS})
    return features().serialize_example(ex)


def parse(data: bytes) -> dict:
    """Entry bytes -> dict: text fields as ``str``, ``epoch`` int, ``hr``/``lr`` PNG bytes, ``meta`` a JSON str,
    ``latent_moments`` the (h, w, 2C) bfloat16 posterior or None (not cached)."""
    ex = features().deserialize_example_np(data)
    blobs = ("hr", "lr", "latent_moments")
    out = {k: (v.decode("utf-8") if isinstance(v, bytes) and k not in blobs else v) for k, v in ex.items()}
    out["epoch"] = int(out["epoch"])
    out["latent_moments"] = decode_moments(out["latent_moments"]) if out.get("latent_moments") else None
    return out


def read_first(shard: str | os.PathLike) -> bytes | None:
    """The first entry of a shard (None when it is empty): cheap, a shard is read by random access."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(shard), "readahead_buffer_size:0")
    try:
        return reader.read([0])[0] if reader.num_records() else None
    finally:
        reader.close()


def shard_name(index: int, count: int, split: str = SPLIT) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def records_dir(path: str | os.PathLike) -> paths.AnyPath:
    """``OUT`` or ``OUT/records`` -> the folder holding the shards (local, or a ``gs://`` prefix)."""
    path = paths.as_path(path)
    return path / RECORDS_DIR if (path / RECORDS_DIR).is_dir() else path


def list_shards(path: str | os.PathLike | list, split: str = SPLIT) -> list[paths.AnyPath]:
    """The complete shards of a make-data output (``OUT``, ``OUT/records``, one shard, or a list of shards),
    local or in a bucket (listed through ``etils.epath``; ArrayRecord's reader opens ``gs://`` shards itself).

    Raises ``FileNotFoundError`` naming the path when no shard is there, and ``ValueError`` when shards of the
    series are missing (an unfinished run): reading part of a dataset silently would skew training.
    """
    if isinstance(path, (list, tuple)):
        return [paths.as_path(p) for p in path]
    path = paths.as_path(path)
    if path.is_file():
        return [path]
    folder = records_dir(path)
    shards = sorted(p for p in folder.glob(f"{split}-*{SHARD_SUFFIX}") if _SHARD_RE.match(p.name))
    if not shards:
        raise FileNotFoundError(f"no {split}-*{SHARD_SUFFIX} shards in {folder}")
    count = int(_SHARD_RE.match(shards[0].name)["count"])
    missing = sorted(set(range(count)) - {int(_SHARD_RE.match(p.name)["index"]) for p in shards})
    if missing:
        raise ValueError(f"{folder}: {len(missing)} of {count} shards are missing (first: "
                         f"{shard_name(missing[0], count, split)}); finish the make-data run (rerun it to resume)")
    return shards


def count_records(shard: str | os.PathLike) -> int:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(shard))
    try:
        return reader.num_records()
    finally:
        reader.close()


def write_tfds_metadata(folder: str | os.PathLike, description: str = "") -> Path:
    """Write ``dataset_info.json`` and ``features.json`` for the complete shards in ``folder``; returns folder."""
    import tensorflow_datasets as tfds

    folder = records_dir(folder)
    shards = list_shards(folder)
    template = tfds.core.ShardedFileTemplate(data_dir=folder, template="{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}",
                                             dataset_name=DATASET_NAME, split=SPLIT, filetype_suffix="array_record")
    split = tfds.core.SplitInfo(name=SPLIT, shard_lengths=[count_records(p) for p in shards],
                                num_bytes=sum(p.stat().st_size for p in shards), filename_template=template)
    identity = tfds.core.dataset_info.DatasetIdentity(name=DATASET_NAME, version=tfds.core.Version(DATASET_VERSION),
                                                      data_dir=str(folder), module_name=__name__)
    info = tfds.core.DatasetInfo(builder=identity, features=features(), split_dict=tfds.core.SplitDict([split]),
                                 description=description or "XPSR training pairs written by xpsr-jax make-data")
    info.set_file_format("array_record")
    info.write_to_directory(folder)
    return folder


def tfds_builder(path: str | os.PathLike):
    """A tfds builder over a make-data output (``OUT`` or ``OUT/records``)::

        ds = tfds_builder("OUT").as_data_source(split="train")   # ds[i] -> dict of NumPy values, no TensorFlow
    """
    import tensorflow_datasets as tfds

    folder = records_dir(path)
    if not (folder / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{folder}: no dataset_info.json; it is written when every shard is complete "
                                "(rerun make-data to finish)")
    return tfds.builder_from_directory(folder)

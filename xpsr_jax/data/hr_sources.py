"""Where ``make-data`` takes HR images from: a folder of image files, or a tfds dataset (for users who are online).

Both give, for image ``index``, an id, a printable origin and a *reference* that a worker process turns into an
image with ``read_hr``. References are small (a path, or an index into a tfds split) so they travel to worker
processes cheaply; a tfds source is reopened once per worker.

Folder ids are paths relative to the folder without extension (``sub/0001``). Two files whose ids collide
(``a.png`` and ``a.jpg``) cannot both be joined with captions: the first in sorted order keeps the id and the others
are reported by ``duplicate_of`` (``make-data`` skips and counts them).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xpsr_jax.data.images import DecodedImage, ImageDecodeError, decode_image, list_images

_TFDS_NAME = re.compile(r"^(tfds:)?[a-z][a-z0-9_]*(/[A-Za-z0-9_.\-]+)*$")


@dataclass(frozen=True)
class TfdsSpec:
    """A tfds split to read HR images from; ``image_key`` None picks ``hr``, else ``image``."""

    name: str
    split: str = "train"
    data_dir: str | None = None
    image_key: str | None = None


class FolderSource:
    """Every image file under a folder (see ``images.list_images``), in sorted order."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.paths = list_images(self.root)
        self.ids = [p.relative_to(self.root).with_suffix("").as_posix() for p in self.paths]
        first: dict[str, int] = {}
        self._dups = {}
        for i, image_id in enumerate(self.ids):
            if image_id in first:
                self._dups[i] = str(self.paths[first[image_id]])
            else:
                first[image_id] = i

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self) -> str:
        return str(self.root)

    def fingerprint(self) -> str:
        """Changes when the list of images changes (which would change every item's seed)."""
        return hashlib.sha1("\n".join(self.ids).encode()).hexdigest()

    def image_id(self, index: int) -> str:
        return self.ids[index]

    def origin(self, index: int) -> str:
        return str(self.paths[index])

    def reference(self, index: int):
        return str(self.paths[index])

    def duplicate_of(self, index: int) -> str | None:
        return self._dups.get(index)


class TfdsSource:
    """One split of a tfds dataset read through ``tfds.data_source`` (ArrayRecord, no TensorFlow to read)."""

    def __init__(self, spec: TfdsSpec):
        self.spec = spec
        self._len = len(open_tfds(spec))

    def __len__(self) -> int:
        return self._len

    def describe(self) -> str:
        return f"tfds:{self.spec.name}:{self.spec.split}"

    def fingerprint(self) -> str:
        return hashlib.sha1(f"{self.describe()}:{self._len}".encode()).hexdigest()

    def image_id(self, index: int) -> str:
        return f"{self.spec.name}/{self.spec.split}/{index:08d}"

    def origin(self, index: int) -> str:
        return f"{self.describe()}[{index}]"

    def reference(self, index: int):
        return index

    def duplicate_of(self, index: int) -> str | None:
        return None


@functools.cache
def open_tfds(spec: TfdsSpec):
    """The tfds data source of ``spec`` (cached per process). Images stay encoded: ``read_hr`` decodes them."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a runtime requirement
        raise RuntimeError("reading a tfds dataset needs tensorflow-datasets") from e
    try:
        builder = tfds.builder(spec.name, data_dir=spec.data_dir)
        key = spec.image_key or ("hr" if "hr" in builder.info.features else "image")
        decoders = {key: tfds.decode.SkipDecoding()} if key in builder.info.features else None
        return tfds.data_source(spec.name, split=spec.split, data_dir=spec.data_dir, decoders=decoders)
    except Exception as e:  # noqa: BLE001 - tfds raises many types; the user needs one clear message
        cause = (str(e).strip().splitlines() or [""])[0]  # tfds appends the list of every known dataset
        raise RuntimeError(
            f"cannot open the tfds dataset {spec.name!r} split {spec.split!r}: {type(e).__name__}: {cause} "
            "tfds downloads and prepares datasets on first use, which needs network access (and, for datasets "
            "with image features, TensorFlow to prepare them); offline, pass a folder of HR images instead, or "
            "--tfds-data-dir pointing at an already prepared copy") from e


def tfds_image_key(spec: TfdsSpec, example: dict) -> str:
    key = spec.image_key or ("hr" if "hr" in example else "image")
    if key not in example:
        raise KeyError(f"tfds:{spec.name}: no {key!r} feature; choose one of {sorted(example)} with "
                       "--tfds-image-key")
    return key


def read_hr(reference, alpha: str = "white", tfds_spec: TfdsSpec | None = None) -> tuple[DecodedImage, int]:
    """A source reference -> (decoded image, encoded size in bytes; 0 when the source stores raw pixels)."""
    if tfds_spec is None:
        path = Path(reference)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageDecodeError(f"{path}: cannot read file ({e.strerror or e})") from e
        return decode_image(data, str(path), alpha), len(data)
    example = open_tfds(tfds_spec)[int(reference)]
    value = example[tfds_image_key(tfds_spec, example)]
    name = f"tfds:{tfds_spec.name}:{tfds_spec.split}[{reference}]"
    if isinstance(value, (bytes, np.bytes_)):
        return decode_image(bytes(value), name, alpha), len(value)
    arr = np.asarray(value)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ImageDecodeError(f"{name}: expected encoded bytes or (H, W, 1|3) uint8, got {arr.dtype} {arr.shape}")
    return DecodedImage(np.ascontiguousarray(np.broadcast_to(arr, (*arr.shape[:2], 3)))), 0


def open_source(spec: str, tfds_split: str = "train", tfds_data_dir: str | None = None,
                tfds_image_key: str | None = None) -> FolderSource | TfdsSource:
    """``HR_DIR`` -> a source: an existing folder, else a tfds name (``div2k``, ``div2k/bicubic_x4``,
    ``tfds:name``). Anything else raises ``FileNotFoundError`` naming ``spec``."""
    if Path(spec).is_dir():
        return FolderSource(spec)
    if _TFDS_NAME.match(spec):
        name = spec.removeprefix("tfds:")
        return TfdsSource(TfdsSpec(name, tfds_split, tfds_data_dir, tfds_image_key))
    raise FileNotFoundError(f"HR source {spec!r} is neither a folder nor a tfds dataset name")

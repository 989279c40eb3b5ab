"""Every file the project writes appears atomically: written under a temporary name in the same folder, flushed to
disk, then renamed over the target with ``os.replace``. A crash or a kill leaves the old file or nothing, never half
a file, and a reader never sees a partial one.

JSON is written strictly (``allow_nan=False``): ``NaN`` and ``Infinity`` are not JSON and strict readers reject
them, so a non-finite number is an error that names where it sits (``settings.guidance_scale``).

    >>> atomic_write_json("out/photo.json", {"psnr": 27.1})
    >>> with atomic_open("out/photo.png", "wb") as f:
    ...     image.save(f, format="PNG")
    >>> with atomic_target("out/model.safetensors") as tmp:   # writers that want a file name
    ...     save_file(tensors, str(tmp))

Folders written as a whole (Flax checkpoints, orbax steps) are staged and renamed by their own writers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import IO, Any, Iterator

from xpsr_jax.errors import XPSRError


class NonFiniteJSONError(XPSRError, ValueError):
    """A value to be written as JSON is NaN or infinite; the message names its key path."""


def _temporary_name(path: Path) -> Path:
    # hidden, per process, and with a suffix no reader of images, shards or stores picks up
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                newline: str | None = None) -> Iterator[IO]:
    """A file object for ``path`` whose contents appear there only when the ``with`` block ends without error.

    ``mode`` is ``"wb"`` or ``"w"`` (text defaults to UTF-8; ``newline=""`` for the csv module). The parent folder
    must exist. On an exception the temporary file is removed and the target is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    tmp = _temporary_name(path)
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    try:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that take a file name (safetensors, ArrayRecord); renamed to
    ``path`` when the ``with`` block ends without error, removed otherwise."""
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def strict_json_dumps(obj: Any, *, indent: int | None = 2, sort_keys: bool = False, ensure_ascii: bool = False,
                      default=None) -> str:
    """``json.dumps`` with ``allow_nan=False``; a NaN or infinity raises :class:`NonFiniteJSONError` naming its
    key path (``sizes.scale``, ``images[3].psnr``)."""
    try:
        return json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=default,
                          allow_nan=False)
    except ValueError as e:
        where = _first_non_finite(obj, "")
        if where is None:
            raise
        key, value = where
        raise NonFiniteJSONError(f"{key or 'the value'} is {value}, which JSON cannot hold") from e


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
                      ensure_ascii: bool = False, default=None) -> Path:
    """Strict JSON (see :func:`strict_json_dumps`) plus a final newline, written atomically. The text is built
    before the file is opened, so a non-finite value leaves the target untouched."""
    text = strict_json_dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=default)
    return atomic_write_text(path, text + "\n")


def _first_non_finite(obj: Any, where: str) -> tuple[str, float] | None:
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where, obj)
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _first_non_finite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _first_non_finite(v, f"{where}[{i}]")
            if found:
                return found
    elif hasattr(obj, "tolist"):  # NumPy scalars and arrays
        return _first_non_finite(obj.tolist(), where)
    return None

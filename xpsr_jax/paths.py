"""What a path on the command line or in a config is: a local ``pathlib.Path``, or an ``etils.epath.Path`` for a
Google Cloud Storage URL (``gs://bucket/run``). The one place that decides; everything else asks it.

``pathlib.Path("gs://bucket/run")`` silently becomes the local folder ``gs:/bucket/run``, so a run pointed at a
bucket would write to the machine's disk and vanish with it. Hence every URL is either turned into a bucket path
here or refused by name:

* ``gs://`` works for a training run's inputs and outputs: ``train --workdir`` (orbax checkpoints through
  TensorStore's GCS driver, ``metrics.jsonl``, TensorBoard events, data-iterator states), ``config.init_from``,
  ``config.data.path`` (ArrayRecord's own GCS reader), ``export`` (Flax and ``--torch``), the input of
  ``convert to-torch``, ``eval --out`` (the reports are written locally, then uploaded, ``results.json``
  last), and the caption store ``OUT`` of ``caption`` (read in place; appended to a local copy that is uploaded
  whole every minute and at the end, ``--merge`` and the imports included). Listing, small files and uploads go
  through ``etils.epath`` (fsspec + ``gcsfs``).
* Every other scheme, and ``gs://`` given to a command that cannot write or read a bucket yet
  (:data:`GCS_COMMANDS` lists those that can), is refused with the reason before any work starts.

Credentials are Google's application-default credentials (ADC) of each client. A local emulator is named once,
with ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT``: :func:`use_emulator_for_all_clients` passes it on to the two
clients that read other variables (TensorStore: ``TENSORSTORE_GCS_HTTP_URL``; ArrayRecord's reader, built on
google-cloud-cpp: ``CLOUD_STORAGE_EMULATOR_ENDPOINT`` — it ignores ``STORAGE_EMULATOR_HOST`` and without its own
variable tries the real service).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator, Union

from xpsr_jax.errors import UsageError

if TYPE_CHECKING:  # etils is imported on first use, so that ``xpsr-jax --help`` stays instant
    from etils import epath

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
GCS = "gs"
# the commands (as ``xpsr_jax.cli.command_name`` spells them) with gs:// support; the others refuse every URL
GCS_COMMANDS = ("train", "export", "convert to-torch", "eval", "caption", "sr")

# A path a run reads or writes: a local folder or file, or an object / prefix in a bucket.
AnyPath = Union[Path, "epath.Path"]


class UnsupportedPathError(UsageError, ValueError):
    """A URL where only a local path (or a scheme this command does not support) is accepted."""


def scheme(value: str | os.PathLike) -> str | None:
    """``"gs"`` for ``gs://b/x``, None for a local path."""
    m = _URL.match(str(value))
    return m.group(1).lower() if m else None


def is_gcs(value: str | os.PathLike) -> bool:
    return scheme(value) == GCS


def as_path(value: str | os.PathLike, what: str = "path") -> AnyPath:
    """A local ``Path``, or an ``epath.Path`` for ``gs://``; any other URL is refused, naming ``what``.
    (``epath.Path`` has no working ``absolute()``/``resolve()`` for URLs: see :func:`absolute`.)"""
    s = str(value)
    kind = scheme(s)
    if kind is None:
        return Path(s)
    if kind == GCS:
        from etils import epath

        use_emulator_for_all_clients()
        return value if isinstance(value, epath.Path) else epath.Path(s)
    raise UnsupportedPathError(f"{what} {s!r}: {kind}:// URLs are not supported (local paths and gs:// are); "
                               "mount the storage (e.g. with gcsfuse) and give the mounted path")


def absolute(value: str | os.PathLike) -> AnyPath:
    """``as_path(value)``, made absolute when local (a URL is absolute already; ``epath``'s own ``absolute()``
    would prefix the working directory)."""
    path = as_path(value)
    return path.absolute() if isinstance(path, Path) else path


def check_local(value: str, what: str) -> str:
    """``value`` unchanged, or :class:`UnsupportedPathError` naming ``what`` when it is a URL (for paths that
    must be local: a command or an option without bucket support)."""
    kind = scheme(value)
    if kind:
        hint = (f"this option takes local paths only (gs:// works for: {', '.join(GCS_COMMANDS)})" if kind == GCS
                else "mount the storage (e.g. with gcsfuse)")
        raise UnsupportedPathError(f"{what} {value!r}: {kind}:// URLs are not supported here; {hint} and give "
                                   "a local or mounted path")
    return value


def local_path(value: str) -> Path:
    """argparse ``type=`` for a path that must be local: a Path, or an argparse error naming the URL."""
    try:
        return Path(check_local(value, "path"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run_path(value: str) -> AnyPath:
    """argparse ``type=`` for a run's input or output: a local Path or a gs:// ``epath.Path``."""
    try:
        return as_path(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# why a command without bucket support has none, where there is more to say than "local files only"
WHY_LOCAL = {
    "make-data": "writes local files only (ArrayRecord's writer has no GCS support); write OUT locally, then copy "
                 "it up (gcloud storage cp -r OUT gs://...) and train with config.data.path=gs://...",
}


def refuse_urls(command: str, argv: list[str]) -> None:
    """:class:`UnsupportedPathError` for the first URL on the command line of a command without bucket support
    (``sr``, ``make-data``, ...), so it never becomes a local folder called ``gs:``."""
    if command in GCS_COMMANDS:
        return
    for token in argv:
        value = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
        kind = scheme(value)
        if kind:
            why = (WHY_LOCAL.get(command, "reads and writes local files only") + "; gs:// works for: "
                   + ", ".join(GCS_COMMANDS) if kind == GCS else f"{kind}:// is not supported")
            raise UnsupportedPathError(f"{value!r}: xpsr-jax {command} {why}. Mount the bucket (e.g. with "
                                       "gcsfuse) and give the mounted path")


def use_emulator_for_all_clients() -> None:
    """With ``STORAGE_EMULATOR_HOST`` set (gcsfs and google-cloud-storage read it), point TensorStore and
    ArrayRecord's reader at the same server unless their own variables are set. Called before any client opens
    a bucket: TensorStore reads its variable once per process."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        return
    url = host if "://" in host else f"http://{host}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    os.environ.setdefault("CLOUD_STORAGE_EMULATOR_ENDPOINT", url)


def upload_file(src: str | os.PathLike, dst: AnyPath) -> None:
    """Copy a local file to ``dst`` (local or gs://). A GCS object appears only once its upload completes."""
    with open(src, "rb") as fin, dst.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 8 << 20)


def upload_tree(src: str | os.PathLike, dst: AnyPath, last: tuple[str, ...] = ()) -> None:
    """Copy the local folder ``src`` under ``dst``; the files named in ``last`` (relative paths) go up last, so a
    reader that checks them never sees a half-uploaded folder as complete."""
    src = Path(src)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    rel = [p.relative_to(src).as_posix() for p in files]
    order = [r for r in rel if r not in last] + [r for r in last if r in rel]
    for r in order:
        target = dst / r
        target.parent.mkdir(parents=True, exist_ok=True)
        upload_file(src / r, target)


@contextlib.contextmanager
def local_output(dst: str | os.PathLike, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """A local folder for a writer that knows only local files: ``dst`` itself when local, else a temporary
    folder uploaded to the bucket (``last`` files at the end) when the block ends without error."""
    dst = as_path(dst)
    if isinstance(dst, Path):
        yield dst
        return
    with tempfile.TemporaryDirectory(prefix="xpsr-upload-") as tmp:
        yield Path(tmp)
        upload_tree(tmp, dst, last)


@contextlib.contextmanager
def replacing(dst: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file whose bytes replace ``dst`` whole when the block ends without error: renamed into place when
    local (a reader never sees half a file), uploaded once when in a bucket (a GCS object appears only once its
    upload completes). On an error ``dst`` is left as it was."""
    from xpsr_jax.files import atomic_open

    dst = as_path(dst)
    if isinstance(dst, Path):
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(dst, "wb") as f:  # the temporary name is per process: two writers never share one
            yield f
        return
    with tempfile.TemporaryDirectory(prefix="xpsr-upload-") as tmp:
        staged = Path(tmp) / dst.name
        with open(staged, "wb") as f:
            yield f
        upload_file(staged, dst)


@contextlib.contextmanager
def local_copy(src: str | os.PathLike) -> Iterator[Path]:
    """A local folder with the contents of ``src``, for a reader that knows only local files: ``src`` itself when
    local, else a temporary copy of the bucket prefix (removed when the block ends)."""
    src = as_path(src)
    if isinstance(src, Path):
        yield src
        return
    with tempfile.TemporaryDirectory(prefix="xpsr-download-") as tmp:
        root = str(src).rstrip("/") + "/"
        for url in list_objects(src):
            target = Path(tmp, url[len(root):])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(as_path(url).read_bytes())
        yield Path(tmp)


def _gcs_client(url: str):
    """The gcsfs filesystem ``etils.epath`` reads and writes ``url`` with (one per process)."""
    from etils.epath import backend

    return backend.fsspec_backend.fs(url)


def fresh(value: str | os.PathLike, folder: str | os.PathLike | None = None) -> AnyPath:
    """``as_path(value)``, with a bucket client's cached listing of ``folder`` (default: the path's parent) dropped
    first: gcsfs keeps listings, object sizes included, for the life of the process, so an object another writer
    uploaded since would be missed or read cut short. Local paths are returned as they are."""
    path = as_path(value)
    if not isinstance(path, Path):
        folder = str(folder if folder is not None else path.parent)
        _gcs_client(folder).invalidate_cache(folder[len("gs://"):])
    return path


def list_objects(prefix: str | os.PathLike) -> list[str]:
    """The ``gs://`` URLs of every object under a bucket prefix, in one listing, asked fresh (``epath`` refuses
    recursive globs on buckets; GCS lists a prefix's objects at every depth in one request per thousand)."""
    root = str(prefix).rstrip("/")
    if not is_gcs(root):
        raise ValueError(f"{root!r} is not a gs:// prefix")
    fresh(root, folder=root)
    return [f"gs://{p}" for p in _gcs_client(root).find(root[len("gs://"):] + "/")]

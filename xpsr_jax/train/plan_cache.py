"""Remembered answers of TPU plans: the same program for the same slice is compiled once per host.

JAX's persistent compilation cache does not serve compile-only devices: with jax 0.10.2 and libtpu 0.0.42.1 it
writes the executable, but reading it back fails (``PjRtCompiler must be constructed with a Client to call
DeserializeLoadedExecutable``) and the program is compiled again. A plan needs the compiler's figures, not the
executable, so they are kept instead, as one small JSON file per program, keyed by the lowered program's text, the
slice and everything else that changes what the compiler does (JAX and libtpu versions, XLA/libtpu flags).

The folder: ``$XPSR_PLAN_CACHE_DIR``, else ``~/.cache/xpsr-jax/tpu-plans``; ``XPSR_PLAN_CACHE_DIR=`` (empty)
turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from xpsr_jax.files import atomic_write_json

DEFAULT_DIR = Path.home() / ".cache" / "xpsr-jax" / "tpu-plans"


def cache_dir() -> Path | None:
    value = os.environ.get("XPSR_PLAN_CACHE_DIR")
    if value is None:
        return DEFAULT_DIR
    return Path(value) if value else None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def program_key(program_text: str, target: str) -> str:
    """sha256 of what decides the compiler's answer: the lowered program, the target slice, the versions and
    flags of the compiler."""
    import jax

    h = hashlib.sha256()
    for part in (program_text, target, jax.__version__, _version("jaxlib"), _version("libtpu"),
                 os.environ.get("LIBTPU_INIT_ARGS", ""), os.environ.get("XLA_FLAGS", ""),
                 str(jax.config.jax_exec_time_optimization_effort), str(jax.config.jax_memory_fitting_effort)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def load(key: str) -> dict | None:
    folder = cache_dir()
    path = folder / f"{key}.json" if folder else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # a damaged entry is recompiled and rewritten
        return None


def store(key: str, figures: dict) -> None:
    folder = cache_dir()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / f"{key}.json", figures)
    except OSError:  # a read-only home: plans still work, uncached
        pass

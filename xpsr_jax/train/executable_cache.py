"""A run's compiled train step, kept in its workdir so that a restart on the same machine or slice skips tracing,
lowering and compiling the step.

An entry is the executable serialized by ``jax.experimental.serialize_executable`` with the pytree structures of
its arguments and results, in ``<folder>/<key>.jaxexe``. The key is known before anything is traced, so a hit costs
only reading and loading the file; it must therefore cover everything that decides the program:

- the config, but for the fields that only steer the loop around the step (:data:`LOOP_ONLY`);
- the mesh (axis names and sizes) and the devices it holds (ids, kinds, process indices), this process's index
  and the process count (each host keeps its own entry);
- the JAX and jaxlib versions, the backend's platform version, ``XLA_FLAGS``/``LIBTPU_INIT_ARGS`` and the JAX
  settings that enter a program (matmul precision, x64);
- the source of the ``xpsr_jax`` package: an edited loss or model is a new program, even with the same config.

Anything else that goes wrong (a damaged file, a load the runtime refuses) is a miss: the caller compiles and
says why (:class:`Lookup.reason`). Entries are written atomically, so a kill while writing leaves none, and a
folder keeps only its newest entry (an entry is as large as the executable: 30 MB for the tiny CPU step).
JAX's persistent compilation cache keys by the lowered program instead, so it still traces and lowers the step on
every start; ``bench/cold_start.py`` measures both.

Not used by ``xpsr-jax train`` (it opts in through ``create_trainer(executable_dir=...)`` only): on XLA:CPU with
jax 0.10.2, a step that was itself read from the persistent compilation cache serializes into an entry that loads
without error and then fails at its first run (``NOT_FOUND: Function broadcast_maximum_fusion not found``;
``bench/chaos_train.py`` met it on its second start), so a load is no proof that an entry works. A restart of a
run therefore uses the persistent cache (:func:`xpsr_jax.train.loop.use_run_compilation_cache`), which costs the
lowering on top (``bench/results/README.md``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import jax

from xpsr_jax.files import atomic_open

# config fields read only by the loop, the data pipeline or the monitor: changing them keeps the step's program
LOOP_ONLY = ("seed", "init_from", "num_train_steps", "log_every", "checkpoint_every", "keep_checkpoints",
             "validate_every", "validation", "device_peak_tflops", "data.path", "data.worker_count",
             "data.embeddings", "data.hr_condition_prob", "data.online_degradation", "data.source")
SUFFIX = ".jaxexe"


@dataclasses.dataclass
class Lookup:
    compiled: Any | None  # a jax.stages.Compiled, or None on a miss
    reason: str  # "loaded <file>" or why the step must be compiled


def step_key(config, mesh) -> str:
    """sha256 (hex) of everything that decides the compiled train step for ``config`` on ``mesh``."""
    cfg = config.to_dict()
    for dotted in LOOP_ONLY:
        *parents, leaf = dotted.split(".")
        node = cfg
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    devices = [(d.id, d.device_kind, d.process_index) for d in mesh.devices.flat]
    backend = jax.devices()[0].client
    parts = {
        "config": cfg, "mesh": [list(mesh.axis_names), [int(s) for s in mesh.devices.shape]], "devices": devices,
        "process": [jax.process_index(), jax.process_count()], "jax": jax.__version__, "jaxlib": _jaxlib_version(),
        "platform": [backend.platform, backend.platform_version],
        "flags": [os.environ.get("XLA_FLAGS", ""), os.environ.get("LIBTPU_INIT_ARGS", "")],
        "precision": str(jax.config.jax_default_matmul_precision), "x64": bool(jax.config.jax_enable_x64),
        "source": source_digest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _jaxlib_version() -> str:
    import jaxlib

    return jaxlib.__version__


@functools.cache
def source_digest() -> str:
    """sha256 of the ``xpsr_jax`` package's Python files (names and contents): the code that builds the step."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def load(folder: Path, key: str) -> Lookup:
    """The step serialized under ``key`` in ``folder``, loaded onto this process's devices; or a miss saying why."""
    from jax.experimental import serialize_executable

    path = Path(folder) / f"{key}{SUFFIX}"
    if not path.is_file():
        return Lookup(None, f"no compiled step for this program in {folder}")
    try:
        payload, in_tree, out_tree = pickle.loads(path.read_bytes())
        compiled = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
    except Exception as e:  # noqa: BLE001 - any failure to load means compiling, never a failed run
        return Lookup(None, f"cannot load {path} ({type(e).__name__}: {e})")
    return Lookup(compiled, f"loaded {path}")


def store(folder: Path, key: str, compiled) -> str:
    """Serialize ``compiled`` under ``key``; returns what happened (a backend that cannot serialize is no error)."""
    from jax.experimental import serialize_executable

    try:
        payload, in_tree, out_tree = serialize_executable.serialize(compiled)
        blob = pickle.dumps((payload, in_tree, out_tree))
    except Exception as e:  # noqa: BLE001
        return f"not kept: cannot serialize the step ({type(e).__name__}: {e})"
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_open(folder / f"{key}{SUFFIX}", "wb") as f:
            f.write(blob)
    except OSError as e:
        return f"not kept: {e}"
    # one entry per folder: a run's earlier programs (other code, other config) will not be loaded again
    for old in folder.glob(f"*{SUFFIX}"):
        if old.name != f"{key}{SUFFIX}":
            old.unlink(missing_ok=True)
    return f"kept in {folder / (key + SUFFIX)}"

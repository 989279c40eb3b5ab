"""Finish the imports that tensorflow_datasets and grain run under etils' ``lazy_imports()`` before threads start.

Both libraries import parts of themselves inside ``epy.lazy_imports()``, which swaps ``builtins.__import__`` for
every thread of the process while the block runs. Another thread that imports at that moment gets a lazy stub
instead of the module: a reader thread of the input pipeline died with "'LazyModule' object is not callable", and
a JAX trace in the demo's compile thread with "'jax._src.hijax' is not a package".

So whoever is about to start threads calls :func:`finish_lazy_imports` first, in its own thread: the input
pipeline before its reader threads (and in each grain worker process), the demo before its compile thread. Nothing
imports tensorflow_datasets merely by importing the pipeline.
"""

from __future__ import annotations

import functools


@functools.cache
def finish_lazy_imports() -> None:
    """Import grain, tensorflow_datasets and the record features (tfds's codec) now, in the calling thread."""
    import grain  # noqa: F401
    import tensorflow_datasets.core  # noqa: F401

    from xpsr_jax.data import records

    records.features()


def finish_lazy_imports_in_worker(worker_index: int, worker_count: int) -> None:
    """:func:`finish_lazy_imports` as a grain ``worker_init_fn`` (runs in each worker process before it reads)."""
    del worker_index, worker_count
    finish_lazy_imports()

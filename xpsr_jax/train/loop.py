"""``train_and_evaluate(config, workdir)``: the training loop the CLI, the demo and the tests all call.

Order at start: resume this run from ``workdir/checkpoints`` if it has any (a failed restore is an error); else
start from ``config.init_from`` (an ``xpsr-jax convert`` checkpoint); else random init (tests only). A non-finite
loss stops the run naming the step, leaving the last good checkpoint; SIGTERM (preemption) saves and exits.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time

import jax
import numpy as np
import ml_collections

from xpsr_jax import paths
from xpsr_jax.train import partition
from xpsr_jax.train.checkpoints import RunCheckpoints
from xpsr_jax.train.monitor import Monitor
from xpsr_jax.train.trainer import create_trainer, load_pretrained
from xpsr_jax.train.validation import Validator
from xpsr_jax.errors import XPSRError


COMPILATION_CACHE_DIR = "jax-cache"  # in the workdir, unless JAX_COMPILATION_CACHE_DIR names another


class NonFiniteLossError(XPSRError, FloatingPointError):
    """The loss became NaN or inf; the message names the step."""


@dataclasses.dataclass
class RunSummary:
    start_step: int
    end_step: int
    losses: dict[int, float]  # step -> loss of that step (on process 0)
    compile_seconds: float
    preempted: bool


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, trainer=None,
                       data_iter=None) -> RunSummary:
    """Train until ``config.num_train_steps``. ``trainer`` (from ``create_trainer`` with an equal config but for
    the step count) and ``data_iter`` may be passed to reuse a compiled step or feed other data. ``workdir`` is
    a local folder or a ``gs://`` prefix (see :mod:`xpsr_jax.paths`)."""
    workdir = paths.as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if trainer is None:
        mesh = partition.make_mesh(tuple(tuple(a) for a in config.mesh.shape))
        use_run_compilation_cache(workdir)
        trainer = create_trainer(config, mesh)
    data_iter = data_iter if data_iter is not None else make_data_iterator(config)
    partition.barrier("xpsr_train_ready")
    ckpts = RunCheckpoints(workdir / "checkpoints", config.checkpoint_every, config.keep_checkpoints)
    monitor = Monitor(config, workdir, trainer)
    validator = Validator(config, monitor.files_dir or workdir, trainer.nets)  # images only from process 0

    if ckpts.latest_step() is not None:
        start, state = ckpts.restore(trainer.abstract_state, data_iter)
        monitor.log_text(f"resumed from step {start} in {ckpts.directory}")
    elif config.init_from:
        params = load_pretrained(trainer, config.init_from)
        state = trainer.state_from_params(params, jax.random.key(config.seed))
        start = 0
    else:
        params = partition.host_to_global(trainer.nets.fresh_params(config.seed), trainer.plan.param_shardings)
        state = trainer.state_from_params(params, jax.random.key(config.seed))
        start = 0

    preempted = _PreemptionFlag()
    losses: dict[int, float] = {}
    step = start
    try:
        with monitor.progress(start, config.num_train_steps) as bar:
            while step < config.num_train_steps:
                batch = global_batch(trainer, next(data_iter))
                t0 = time.perf_counter()
                state, metrics = trainer.step(state, batch)
                metrics = jax.device_get(metrics)  # one small transfer per step: the NaN guard needs it
                loss = float(metrics["loss"])
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss is {loss} at step {step + 1}; stopping. The last good checkpoint "
                        f"(step {ckpts.latest_step()}) in {ckpts.directory} is kept.")
                step += 1
                losses[step] = loss
                monitor.step(step, metrics, time.perf_counter() - t0)
                bar.update(1)
                if ckpts.save(step, state, data_iter, config.to_dict()):
                    monitor.sync()  # a gs:// workdir's metrics and events, as fresh as its checkpoints
                if validator.due(step):
                    out = validator.run(step, state, monitor.writer)
                    if out is not None:
                        monitor.log_text(f"validation images of step {step} in {out}")
                if preempted.is_set():
                    monitor.log_text(f"SIGTERM: saving step {step} and stopping")
                    ckpts.save(step, state, data_iter, config.to_dict(), force=True)
                    break
        if not preempted.is_set():
            ckpts.save(step, state, data_iter, config.to_dict(), force=True)
    finally:
        preempted.restore()
        ckpts.close()
        monitor.close()
        if hasattr(data_iter, "close"):
            data_iter.close()
    return RunSummary(start, step, losses, trainer.compile_seconds, preempted.is_set())


def use_run_compilation_cache(workdir) -> None:
    """Keep this run's compiled programs in ``workdir/jax-cache`` (JAX's persistent compilation cache), so that a
    restart on the same machine loads the train step instead of compiling it; a cache already set
    (``JAX_COMPILATION_CACHE_DIR``, ``jax.config``) is kept, and ``gs://`` workdirs get none. Measured in
    ``bench/results/README.md``: why this and not a serialized executable."""
    if jax.config.jax_compilation_cache_dir or paths.is_gcs(workdir):
        return
    jax.config.update("jax_compilation_cache_dir", str(paths.as_path(workdir) / COMPILATION_CACHE_DIR))


def make_data_iterator(config: ml_collections.ConfigDict):
    """This process's share of the data; every host reads only its own shard."""
    local_batch = config.global_batch_size // jax.process_count()
    if config.data.source == "synthetic":
        from xpsr_jax.train.synthetic import SyntheticIterator

        return SyntheticIterator(local_batch, config.data.resolution, config.seed, jax.process_index(),
                                 process_count=jax.process_count())
    if config.data.source == "records":
        from xpsr_jax.data.pipeline import PipelineConfig, make_iterator, records_source

        if not config.data.path:
            raise ValueError("config.data.path must name a make-data output folder (or use data.source=synthetic)")
        pipe = PipelineConfig(batch_size=local_batch, seed=config.seed,
                              original_image_ratio=config.data.hr_condition_prob,
                              highlevel_prompt="caption" if config.model.highlevel_prompt == "caption" else "empty",
                              worker_count=config.data.worker_count,
                              online_degradation=config.data.online_degradation,
                              cached_latents=config.loss.latents == "precomputed",
                              embeddings=_embeddings(config))
        source = records_source(config.data.path)
        index, count = jax.process_index(), jax.process_count()
        # every process says what it reads: on a pod this is the first place to look when hosts disagree
        print(f"data: process {index} of {count} reads {len(source) // count} of {len(source)} records "
              f"({config.data.path}), batches of {local_batch}", file=sys.stderr, flush=True)
        return make_iterator(source, pipe, process_index=index, process_count=count)
    raise ValueError(f"unknown data.source {config.data.source!r} (records | synthetic)")


def _embeddings(config: ml_collections.ConfigDict) -> str | None:
    """The prompt-embedding store the batches read (``loss.text="precomputed"``), else None (tokenised ids)."""
    if config.loss.get("text", "encoder") != "precomputed":
        return None
    from xpsr_jax.data.cache_check import embeddings_path

    return str(embeddings_path(config.data.path, config.data.get("embeddings", "")))


def global_batch(trainer, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Process-local NumPy batch -> global sharded arrays (no host holds the whole batch)."""
    out = {}
    for k, sharding in trainer.batch_shardings.items():
        if k not in local:
            raise KeyError(f"the data pipeline gave no {k!r} (has {sorted(local)})")
        out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(local[k]))
    return out


class _PreemptionFlag:
    """SIGTERM sets a flag the loop checks after each step, so the step finishes and is saved."""

    def __init__(self):
        self._set = False
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread: no preemption handling
            self._old = None

    def _handler(self, signum, frame):
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)

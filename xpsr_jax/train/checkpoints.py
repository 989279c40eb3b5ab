"""Run checkpoints with orbax: train state, data-iterator state (one file per process) and the config, together.

Saves are asynchronous and atomic (orbax finalises a step directory only when every host has written its shards);
``keep`` bounds how many stay. The directory may be a ``gs://`` prefix: orbax writes the arrays through
TensorStore's GCS driver and marks a finished step with a commit file instead of a rename; the iterator states and
the config go through ``etils.epath``. Restoring targets the abstract sharded state, so arrays land in their final
layout; a checkpoint that exists but does not restore is an error, never a silent fresh start.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from xpsr_jax import paths
from xpsr_jax.errors import XPSRError


class RestoreError(XPSRError, RuntimeError):
    """A checkpoint exists but could not be restored; the message names it."""


@functools.cache
def _one_writer_per_shard_on_cpu() -> None:
    """On CPU devices, write each distinct shard once from its first replica, as orbax already does on GPU.

    Orbax's default elsewhere (replica-parallel saving) slices every replicated shard into one piece per replica
    so that several hosts' device-to-host copies share the work. CPU devices all live in host memory, so the
    pieces only cost a slicing program each: the tiny train state's first save took 36 s with it and 5.6 s
    without (second save 13.5 s and 6.2 s), on 8 CPU devices of a 2-core machine. Restoring reads them as before
    (the exact-resume tests and bench/chaos_train.py restore them bit for bit). Registered once per process."""
    if jax.default_backend() != "cpu":
        return
    # the registered default carries an array-metadata store, which the new handler keeps
    from orbax.checkpoint._src.metadata import array_metadata_store

    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(array_metadata_store=array_metadata_store.Store(),
                                                  use_replica_parallel=False), override=True)


class RunCheckpoints:
    def __init__(self, directory: str | os.PathLike, save_every: int, keep: int):
        _one_writer_per_shard_on_cpu()
        self.directory = paths.absolute(directory)
        # a save cut short by a kill leaves a temporary step folder (or an uncommitted one on gs://) that orbax
        # never reads nor deletes by itself: drop those left by earlier processes (awaited before the first save)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=1,
                                               enable_async_checkpointing=True, create=True,
                                               cleanup_tmp_directories=True)
        self.save_every = save_every
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any, config: dict, force: bool = False) -> bool:
        if not force and (self.save_every <= 0 or step % self.save_every):
            return False
        if step in self.manager.all_steps():
            return False
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(config)), force=True)

    def restore(self, abstract_state: Any, data_iter: Any, step: int | None = None) -> tuple[int, Any]:
        step = self.latest_step() if step is None else step
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iter)))
        except Exception as e:  # noqa: BLE001 - a damaged or mismatched checkpoint must stop the run, named
            raise RestoreError(f"cannot restore checkpoint step {step} in {self.directory}: "
                               f"{type(e).__name__}: {e}") from e
        return step, out["state"]

    def restore_state(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any]:
        """The train state alone (exporting weights needs neither the data iterator nor its files)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise RestoreError(f"no checkpoint in {self.directory}")
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as e:  # noqa: BLE001
            raise RestoreError(f"cannot restore checkpoint step {step} in {self.directory}: "
                               f"{type(e).__name__}: {e}") from e
        return step, out["state"]

    def saved_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise RestoreError(f"no checkpoint in {self.directory}")
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

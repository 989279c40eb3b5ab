"""Restarting a run: the workdir's compilation cache, temporary folders of saves cut short by a kill, and the
serialized-executable cache (its key and fallbacks; ``create_trainer``'s opt-in). Uses the session's compiled tiny
step; compiles nothing else."""

import sys
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import tiny_train_config  # noqa: E402
from xpsr_jax.train import executable_cache, partition  # noqa: E402
from xpsr_jax.train.checkpoints import RunCheckpoints  # noqa: E402
from xpsr_jax.train import loop  # noqa: E402
from xpsr_jax.train.synthetic import SyntheticIterator  # noqa: E402
from xpsr_jax.train.trainer import create_trainer  # noqa: E402


def test_key_follows_what_shapes_the_program():
    mesh = partition.make_mesh(tiny_train_config().mesh.shape)
    base = executable_cache.step_key(tiny_train_config(), mesh)
    same = tiny_train_config(steps=40)
    same.checkpoint_every, same.seed, same.log_every = 7, 3, 5
    assert executable_cache.step_key(same, mesh) == base  # loop-only fields
    for change in ("global_batch_size", "data.resolution", "optim.learning_rate", "model.remat", "compute_dtype"):
        c = tiny_train_config()
        *parents, leaf = change.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = {int: lambda v: v * 2, float: lambda v: v * 2, bool: lambda v: not v,
                      str: lambda v: "bfloat16"}[type(node[leaf])](node[leaf])
        assert executable_cache.step_key(c, mesh) != base, change
    other_mesh = partition.make_mesh((("data", 8), ("fsdp", 1)))
    assert executable_cache.step_key(tiny_train_config(), other_mesh) != base


def test_missing_or_damaged_entry_is_a_miss_that_says_why(tmp_path):
    found = executable_cache.load(tmp_path, "0" * 64)
    assert found.compiled is None and "no compiled step" in found.reason
    (tmp_path / ("1" * 64 + executable_cache.SUFFIX)).write_bytes(b"not an executable")
    found = executable_cache.load(tmp_path, "1" * 64)
    assert found.compiled is None and found.reason.startswith("cannot load") and "1" * 64 in found.reason


def test_truncated_entry_falls_back_to_compiling_and_is_rewritten(tiny_trainer, tmp_path, monkeypatch):
    """A kept step cut short (a full disk) is a miss: the trainer says why, compiles, and keeps a good one."""
    c = tiny_train_config()
    key = executable_cache.step_key(c, tiny_trainer.mesh)
    executable_cache.store(tmp_path, key, tiny_trainer.step)
    path = tmp_path / f"{key}{executable_cache.SUFFIX}"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    earlier = tmp_path / f"{'0' * 64}{executable_cache.SUFFIX}"  # the run's program before a code change
    earlier.write_bytes(b"stale")
    lowered = []

    class Lowered:  # stands for the lowering: compiling it gives the session's step (no compile here)
        def compile(self):
            return tiny_trainer.step

    monkeypatch.setattr("xpsr_jax.train.trainer.lower_step", lambda *a, **k: lowered.append(1) or Lowered())
    trainer = create_trainer(c, tiny_trainer.mesh, executable_dir=tmp_path)
    assert lowered == [1] and trainer.step is tiny_trainer.step
    assert trainer.step_source.startswith("compiled (cannot load") and "kept in" in trainer.step_source
    assert path.read_bytes() == good  # rewritten whole
    assert not earlier.exists()  # a folder keeps only its newest entry


def test_a_save_cut_short_by_a_kill_leaves_no_temporary_folder(tmp_path):
    """SIGKILL during an asynchronous save leaves orbax's ``<step>.orbax-checkpoint-tmp-*`` folder behind; the next
    start removes it (before its first save) instead of keeping every cut-short save on disk for good."""
    stale = tmp_path / "4.orbax-checkpoint-tmp-1764480000000000"
    (stale / "state").mkdir(parents=True)
    (stale / "state" / "partial").write_bytes(b"\0" * 64)
    ckpts = RunCheckpoints(tmp_path, save_every=2, keep=2)
    assert ckpts.latest_step() is None  # never a checkpoint
    state = {"w": jax.numpy.arange(4.0)}
    ckpts.save(2, state, SyntheticIterator(8, 64), {"seed": 0})
    ckpts.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]
    np.testing.assert_array_equal(RunCheckpoints(tmp_path, 2, 2).restore_state(state)[1]["w"], np.arange(4.0))


def test_a_run_keeps_its_compiled_programs_in_its_workdir(tmp_path):
    """A restart on the same machine finds the train step in ``WORKDIR/jax-cache`` unless a cache is already set
    (the tests' one, ``JAX_COMPILATION_CACHE_DIR``); a gs:// workdir gets none."""
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        loop.use_run_compilation_cache(tmp_path)
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax-cache")
        loop.use_run_compilation_cache(tmp_path / "another-run")  # a cache already set is kept
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax-cache")
        jax.config.update("jax_compilation_cache_dir", None)
        loop.use_run_compilation_cache("gs://bucket/runs/x")
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)

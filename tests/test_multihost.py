"""Two JAX processes on this machine (gloo collectives) train together through launch/local.py: a global batch
built from process-local data, one checkpoint written by both, logs from process 0 only, and a resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _train(workdir: Path, logs: Path, steps: int, cache: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "launch/local.py"), "--num-processes", "2", "--devices-per-process", "2",
           "--logs", str(logs), "--timeout", "900", "--",
           str(Path(sys.executable).parent / "xpsr-jax"), "train", "--config", str(ROOT / "configs/tiny.py"),
           "--workdir", str(workdir), f"--config.num_train_steps={steps}", "--config.checkpoint_every=1",
           "--config.model.unet.layers_per_block=1", "--config.global_batch_size=4",
           "--config.data.resolution=64", "--config.mesh.shape=(('data', 2), ('fsdp', 2))"]
    # the resumed run compiles the same step again: a persistent compilation cache makes that a lookup
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1000, env=env)


def test_two_processes_train_checkpoint_and_resume(tmp_path):
    run = _train(tmp_path / "run", tmp_path / "logs", steps=1, cache=tmp_path / "jit-cache")
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "logs").glob("process_*.log")))
    assert run.returncode == 0, run.stdout + logs[-3000:]
    assert (tmp_path / "run/checkpoints/1").is_dir()
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]  # process 0 alone writes metrics
    again = _train(tmp_path / "run", tmp_path / "logs2", steps=2, cache=tmp_path / "jit-cache")
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "logs2").glob("process_*.log")))
    assert again.returncode == 0, again.stdout + logs[-3000:]
    assert "resumed from step 1" in (tmp_path / "logs2/process_0.log").read_text()
    assert (tmp_path / "run/checkpoints/2").is_dir()

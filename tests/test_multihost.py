"""Two JAX processes on this machine (gloo collectives) train together through launch/local.py: a global batch
built from process-local data, the same loss as one process, one checkpoint written by both, logs from process 0
only, a resume; and a one-process run killed with SIGKILL that resumes with identical losses."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cmd(workdir: Path, steps: int) -> list[str]:
    return [str(Path(sys.executable).parent / "xpsr-jax"), "train", "--config", str(ROOT / "configs/tiny.py"),
            "--workdir", str(workdir), f"--config.num_train_steps={steps}", "--config.checkpoint_every=1",
            "--config.model.unet.layers_per_block=1", "--config.global_batch_size=4",
            "--config.data.resolution=64", "--config.mesh.shape=(('data', 2), ('fsdp', 2))"]


def _train(workdir: Path, logs: Path, steps: int, cache: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "launch/local.py"), "--num-processes", "2", "--devices-per-process", "2",
           "--logs", str(logs), "--timeout", "900", "--", *_cmd(workdir, steps)]
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
    # one process with the same 4 devices' worth of mesh sees the same global batch: the loss agrees
    one = subprocess.run(_cmd(tmp_path / "one", steps=1), capture_output=True, text=True, timeout=1000,
                         env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert one.returncode == 0, one.stderr[-3000:]
    single = json.loads((tmp_path / "one/metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert abs(single - rows[0]["loss"]) <= 1e-5 * abs(single)
    again = _train(tmp_path / "run", tmp_path / "logs2", steps=2, cache=tmp_path / "jit-cache")
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "logs2").glob("process_*.log")))
    assert again.returncode == 0, again.stdout + logs[-3000:]
    assert "resumed from step 1" in (tmp_path / "logs2/process_0.log").read_text()
    assert (tmp_path / "run/checkpoints/2").is_dir()


def test_sigkill_mid_run_resumes_with_identical_losses(tmp_path):
    """Kill -9 a one-process run after step 3 (checkpoints every 2 steps), rerun: the steps both runs logged have
    bit-identical losses."""
    import signal
    import time

    cmd = [str(Path(sys.executable).parent / "xpsr-jax"), "train", "--config", str(ROOT / "configs/tiny.py"),
           "--workdir", str(tmp_path / "run"), "--config.num_train_steps=6", "--config.checkpoint_every=2",
           "--config.model.unet.layers_per_block=1", "--config.global_batch_size=2",
           "--config.data.resolution=64", "--config.mesh.shape=(('data', 1), ('fsdp', 1))"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jit-cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    metrics = tmp_path / "run/metrics.jsonl"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any(json.loads(x)["step"] >= 3 for x in metrics.read_text().splitlines()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = [json.loads(x) for x in metrics.read_text().splitlines()]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in metrics.read_text().splitlines()][len(first):]
    assert rows[-1]["step"] == 6
    again = {r["step"]: r["loss"] for r in rows}
    overlap = [r for r in first if r["step"] in again]
    assert overlap, "the resumed run should redo the steps after the last checkpoint"
    assert all(r["loss"] == again[r["step"]] for r in overlap)

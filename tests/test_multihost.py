"""Two JAX processes on this machine (gloo collectives) train together through launch/local.py: a global batch
built from process-local data, the same loss as one process, one checkpoint written by both, logs from process 0
only, a resume; the same on make-data records read through grain, each process its own share; and a one-process
run killed with SIGKILL that resumes with identical losses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One compilation cache for the module: the runs compile the same step (data does not change it)."""
    return tmp_path_factory.mktemp("jit-cache")


def _cmd(workdir: Path, steps: int, *extra: str) -> list[str]:
    return [str(Path(sys.executable).parent / "xpsr-jax"), "train", "--config", str(ROOT / "xpsr_jax/configs/tiny.py"),
            "--workdir", str(workdir), f"--config.num_train_steps={steps}", "--config.checkpoint_every=1",
            "--config.model.unet.layers_per_block=1", "--config.global_batch_size=4",
            "--config.data.resolution=64", "--config.mesh.shape=(('data', 2), ('fsdp', 2))", *extra]


def _train(workdir: Path, logs: Path, steps: int, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "launch/local.py"), "--num-processes", "2", "--devices-per-process", "2",
           "--logs", str(logs), "--timeout", "900", "--", *_cmd(workdir, steps, *extra)]
    # the resumed run compiles the same step again: a persistent compilation cache makes that a lookup
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1000, env=env)


def test_two_processes_train_checkpoint_and_resume(tmp_path, cache):
    run = _train(tmp_path / "run", tmp_path / "logs", steps=1, cache=cache)
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
    again = _train(tmp_path / "run", tmp_path / "logs2", steps=2, cache=cache)
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "logs2").glob("process_*.log")))
    assert again.returncode == 0, again.stdout + logs[-3000:]
    assert "resumed from step 1" in (tmp_path / "logs2/process_0.log").read_text()
    assert (tmp_path / "run/checkpoints/2").is_dir()


def test_two_processes_train_on_make_data_records_and_resume(tmp_path, cache):
    """`xpsr-jax make-data` output -> `xpsr-jax train` on 2 processes through grain: each process reads its own
    half of the records, both iterator states go into the checkpoint, and the resumed run continues from them."""
    from xpsr_jax.data.make_data import MakeDataConfig, make_data
    from xpsr_jax.data.synthetic import sample_photos

    from PIL import Image

    (tmp_path / "hr").mkdir()
    for k, img in enumerate(sample_photos(3, max_side=96)):
        Image.fromarray(img).save(tmp_path / "hr" / f"{k}.png")
    make_data(MakeDataConfig(source=str(tmp_path / "hr"), out=str(tmp_path / "pairs"), epochs=4, crop_size=64,
                             shard_size=5, progress=False))  # 12 records in 3 shards: 6 per process
    data = ["--config.data.source=records", f"--config.data.path={tmp_path / 'pairs'}"]
    run = _train(tmp_path / "run", tmp_path / "logs", 2, cache, *data)
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "logs").glob("process_*.log")))
    assert run.returncode == 0, run.stdout + logs[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)
    for index in range(2):  # each process reads its own half (which half: tests/test_pipeline.py)
        log = (tmp_path / f"logs/process_{index}.log").read_text()
        assert f"data: process {index} of 2 reads 6 of 12 records" in log
    states = sorted(p.name for p in (tmp_path / "run/checkpoints/2/data").glob("process_*.json"))
    assert states == ["process_0-of-2.json", "process_1-of-2.json"]  # one grain iterator state per process
    again = _train(tmp_path / "run", tmp_path / "logs2", 3, cache, *data)
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "logs2").glob("process_*.log")))
    assert again.returncode == 0, again.stdout + logs[-3000:]
    assert "resumed from step 2" in (tmp_path / "logs2/process_0.log").read_text()
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3


def test_sigkill_mid_run_resumes_with_identical_losses(tmp_path):
    """Kill -9 a one-process run after step 3 (checkpoints every 2 steps), rerun: the steps both runs logged have
    bit-identical losses."""
    import signal
    import time

    cmd = [str(Path(sys.executable).parent / "xpsr-jax"), "train", "--config", str(ROOT / "xpsr_jax/configs/tiny.py"),
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

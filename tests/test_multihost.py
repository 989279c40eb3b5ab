"""Two JAX processes on this machine (gloo collectives) train together through launch/local.py, and one-process
runs are killed and resumed, all through the ``xpsr-jax train`` command as a user starts it.

Every run trains the tiny preset (``xpsr_jax.testing``) on 8 devices (data 4 x fsdp 2): one process with 8 fake
devices compiles the same step as tests/test_train.py and the demo, two processes with 4 each share one program, and
the run's compilation cache (tests/conftest.py) turns every later compile of them into a lookup.

- two processes: a global batch built from process-local data, the same loss as one process, one checkpoint
  written by both, logs from process 0 only;
- two processes on make-data records through grain: each process its own share, both iterator states in the
  checkpoint, and a resumed run continues from them;
- one process killed with SIGKILL after step 3 resumes from its step-2 checkpoint with bit-identical losses.

The two-process run comes first: it compiles the 4-device program while, in the other test worker,
tests/test_train.py compiles the 8-device one that the one-process runs then load from the cache. The records
chain (two more two-process launches, about 3 minutes on 2 cores) is a long chain of stages: ``make test-e2e``.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
XPSR = str(Path(sys.executable).parent / "xpsr-jax")


def _cmd(workdir: Path, steps: int, *extra: str) -> list[str]:
    return [XPSR, "train", "--config", "tiny", "--workdir", str(workdir), f"--config.num_train_steps={steps}",
            "--config.mesh.shape=(('data', 4), ('fsdp', 2))", *extra]


def _two(workdir: Path, logs: Path, steps: int, *extra: str) -> str:
    """Train with 2 processes x 4 devices; -> process 0's log (the run must succeed)."""
    cmd = [sys.executable, str(ROOT / "launch/local.py"), "--num-processes", "2", "--devices-per-process", "4",
           "--logs", str(logs), "--timeout", "1800", "--", *_cmd(workdir, steps, "--config.checkpoint_every=1",
                                                                 *extra)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1900)
    logs_text = "\n".join(p.read_text() for p in sorted(logs.glob("process_*.log")))
    assert run.returncode == 0, run.stdout + logs_text[-3000:]
    return (logs / "process_0.log").read_text()


def _one_process_env() -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")


def _metrics(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.e2e
def test_two_processes_train_on_make_data_records_and_resume(tmp_path):
    """`xpsr-jax make-data` output -> `xpsr-jax train` on 2 processes through grain: each process reads its own
    half of the records, both iterator states go into the checkpoint, and the resumed run continues from them."""
    from PIL import Image

    from xpsr_jax import testing
    from xpsr_jax.data.make_data import MakeDataConfig, make_data
    from xpsr_jax.data.synthetic import sample_photos

    (tmp_path / "hr").mkdir()
    for k, img in enumerate(sample_photos(3, max_side=96)):
        Image.fromarray(img).save(tmp_path / "hr" / f"{k}.png")
    make_data(MakeDataConfig(source=str(tmp_path / "hr"), out=str(tmp_path / "pairs"), epochs=4,
                             crop_size=testing.RESOLUTION, shard_size=5, progress=False))  # 12 records, 3 shards
    data = ["--config.data.source=records", f"--config.data.path={tmp_path / 'pairs'}"]
    _two(tmp_path / "run", tmp_path / "logs", 2, *data)
    assert [r["step"] for r in _metrics(tmp_path / "run")] == [1, 2]
    assert all(r["loss"] > 0 for r in _metrics(tmp_path / "run"))
    for index in range(2):  # each process reads its own half (which half: tests/test_pipeline.py)
        log = (tmp_path / f"logs/process_{index}.log").read_text()
        assert f"data: process {index} of 2 reads 6 of 12 records" in log
    states = sorted(p.name for p in (tmp_path / "run/checkpoints/2/data").glob("process_*.json"))
    assert states == ["process_0-of-2.json", "process_1-of-2.json"]  # one grain iterator state per process
    log = _two(tmp_path / "run", tmp_path / "logs2", 3, *data)
    assert "resumed from step 2" in log
    assert _metrics(tmp_path / "run")[-1]["step"] == 3


def test_sigkill_resumes_exactly_and_two_processes_equal_one(tmp_path):
    """2 processes train step 1: metrics come from process 0 alone and the checkpoint written by both is complete.
    Then kill -9 a one-process run of the same config after step 3 (checkpoints every 2 steps) and rerun it: the
    steps both runs logged have bit-identical losses, and its step-1 loss is the two-process one."""
    _two(tmp_path / "two", tmp_path / "logs", 1)
    two = _metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1]  # process 0 alone writes metrics
    assert (tmp_path / "two/checkpoints/1").is_dir()

    cmd = _cmd(tmp_path / "one", 6, "--config.checkpoint_every=2")
    proc = subprocess.Popen(cmd, env=_one_process_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if any(r["step"] >= 3 for r in _metrics(tmp_path / "one")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _metrics(tmp_path / "one")
    done = subprocess.run(cmd, env=_one_process_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _metrics(tmp_path / "one")[len(first):]
    assert rows[-1]["step"] == 6 and rows[0]["step"] <= 3
    again = {r["step"]: r["loss"] for r in rows}
    overlap = [r for r in first if r["step"] in again]
    assert overlap, "the resumed run should redo the steps after the last checkpoint"
    assert all(r["loss"] == again[r["step"]] for r in overlap)
    assert abs(two[0]["loss"] - first[0]["loss"]) <= 1e-5 * abs(first[0]["loss"])  # the same global batch

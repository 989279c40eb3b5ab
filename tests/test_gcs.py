"""gs:// end to end against a local GCS emulator (tests/gcs_emulator.py) on 127.0.0.1, named to every client by
``STORAGE_EMULATOR_HOST`` alone: gcsfs (etils.epath), TensorStore (orbax's arrays) and ArrayRecord's reader.

- a tiny training run writes its checkpoints, metrics and events to ``gs://bucket/run``, is killed with SIGKILL,
  and the rerun resumes from the bucket with the killed run's losses, bit for bit;
- ``export`` writes a Flax checkpoint and the PyTorch layout to the bucket; ``convert to-torch`` reads the Flax one
  back from the bucket and gives the same tensors;
- ``config.data.path`` in a bucket: shards listed through etils.epath and read by ArrayRecord's own GCS reader.

The runs train the tiny preset on 8 devices with the command line of tests/test_multihost.py, so the step program
comes from the suite's compilation cache (tests/conftest.py).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gcs_fixtures import BUCKET, emulator, gcs_env  # noqa: F401 - fixtures

XPSR = str(Path(sys.executable).parent / "xpsr-jax")


def _fs():
    import gcsfs

    return gcsfs.GCSFileSystem(skip_instance_cache=True)


def _run_env(**extra) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8", **extra)


def _train_cmd(workdir: str, steps: int) -> list[str]:
    return ["train", "--config", "tiny", "--workdir", workdir, f"--config.num_train_steps={steps}",
            "--config.mesh.shape=(('data', 4), ('fsdp', 2))", "--config.checkpoint_every=2"]


def _xpsr(logs: Path, *args: str) -> str:
    """Run ``xpsr-jax ARGS`` to the end, its output in ``logs``; -> its stdout (on failure, the tail of its
    stderr names the cause or where it stood)."""
    logs.mkdir(exist_ok=True)
    out, err = logs / f"{args[0]}.{time.monotonic_ns()}.out", logs / f"{args[0]}.{time.monotonic_ns()}.err"
    with open(out, "w") as fout, open(err, "w") as ferr:
        proc = subprocess.Popen([XPSR, *args], env=_run_env(), stdout=fout, stderr=ferr)
        try:
            code = proc.wait(timeout=1800)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"xpsr-jax {' '.join(args)} did not finish: {err.read_text()[-3000:]}")
    assert code == 0, err.read_text()[-3000:]
    return out.read_text()


def _rows(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def _committed_steps(fs, run: str) -> list[int]:
    """Steps whose orbax checkpoint is complete in the bucket (orbax marks finished GCS steps with a commit file
    rather than renaming a temporary folder)."""
    found = fs.glob(f"{run}/checkpoints/*/commit_success.txt")
    return sorted(int(p.split("/")[-2]) for p in found if p.split("/")[-2].isdigit())


@pytest.mark.e2e
def test_train_killed_resumes_from_bucket_then_export_and_convert_back(gcs_env, tmp_path):
    fs = _fs()
    run = f"{BUCKET}/run"
    stage = tmp_path / "stage"  # the killed run's local copy of its metrics (TMPDIR), read to know its losses
    stage.mkdir()
    cmd = _train_cmd(f"gs://{run}", 4)
    proc = subprocess.Popen([XPSR, *cmd], env=_run_env(TMPDIR=str(stage)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, killed_rows = time.time() + 900, []
    while time.time() < deadline and proc.poll() is None:
        committed = _committed_steps(fs, run)
        local = list(stage.glob("xpsr-run-*/metrics.jsonl"))
        rows = _rows(local[0].read_text()) if local else []
        # kill once a checkpoint is in the bucket and the run has logged a step after it
        if committed and rows and rows[-1]["step"] > committed[-1]:
            proc.send_signal(signal.SIGKILL)
            killed_rows = rows
            break
        time.sleep(0.2)
    assert killed_rows, "the run ended (or timed out) before it could be killed"
    proc.wait()
    assert not Path("gs:").exists()
    before = _rows(fs.cat(f"{run}/metrics.jsonl").decode())  # copied up at the checkpoints

    stdout = _xpsr(tmp_path / "logs", *cmd)
    start = int(re.search(r"^steps (\d+) -> 4;", stdout, re.M)[1])
    assert start >= 2 and f"resumed from step {start} in gs://{run}/checkpoints" in stdout
    after = _rows(fs.cat(f"{run}/metrics.jsonl").decode())
    assert after[:len(before)] == before  # the resumed run appended to the bucket's metrics
    resumed = {r["step"]: r["loss"] for r in after[len(before):]}
    assert sorted(resumed) == list(range(start + 1, 5))
    overlap = [r for r in killed_rows if r["step"] in resumed]
    assert overlap, (killed_rows, start)
    assert all(r["loss"] == resumed[r["step"]] for r in overlap)  # bit-identical to the uninterrupted run
    events = fs.ls(f"{run}/tensorboard")
    assert len(events) >= 2 and all(fs.size(e) > 0 for e in events)  # a new event file per upload

    _xpsr(tmp_path / "logs", "export", f"gs://{run}", f"gs://{BUCKET}/export", "--torch", f"gs://{BUCKET}/torch")
    meta = json.loads(fs.cat(f"{BUCKET}/export/xpsr.json"))
    assert meta["source"] == {"kind": "training run", "path": f"gs://{run}", "step": 4}
    back = tmp_path / "torch"
    _xpsr(tmp_path / "logs", "convert", "to-torch", f"gs://{BUCKET}/export", str(back))
    from safetensors.numpy import load

    for sub in ("unet", "controlnet"):
        name = f"{sub}/diffusion_pytorch_model.safetensors"
        uploaded, local = load(fs.cat(f"{BUCKET}/torch/{name}")), load((back / name).read_bytes())
        assert sorted(uploaded) == sorted(local) and len(local) > 10
        assert all(np.array_equal(uploaded[k], local[k]) for k in local)
        assert json.loads(fs.cat(f"{BUCKET}/torch/{sub}/config.json")) == json.loads((back / sub / "config.json")
                                                                                      .read_text())


def test_records_in_a_bucket_are_listed_and_read(gcs_env, tmp_path):
    """``data.path=gs://...``: the shard series is listed through etils.epath, an unfinished series is refused,
    and ArrayRecord's GCS reader (pointed at the emulator by xpsr_jax.paths) reads the records."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from xpsr_jax.data import records
    from xpsr_jax.data.pipeline import records_source

    fs = _fs()
    for index in range(2):
        local = tmp_path / records.shard_name(index, 2)
        writer = ArrayRecordWriter(str(local), records.WRITER_OPTIONS)
        for j in range(3):
            writer.write(f"shard {index} record {j}".encode())
        writer.close()
        fs.put(str(local), f"{BUCKET}/pairs/records/{local.name}")
    shards = records.list_shards(f"gs://{BUCKET}/pairs")
    assert [str(s) for s in shards] == [f"gs://{BUCKET}/pairs/records/{records.shard_name(i, 2)}" for i in range(2)]
    assert records.count_records(shards[1]) == 3
    source = records_source(f"gs://{BUCKET}/pairs")
    assert len(source) == 6 and source[4] == b"shard 1 record 1"

    fs.rm(f"{BUCKET}/pairs/records/{records.shard_name(0, 2)}")
    with pytest.raises(ValueError, match="1 of 2 shards are missing"):
        records.list_shards(f"gs://{BUCKET}/pairs")


def test_eval_writes_its_reports_to_a_bucket(gcs_env, tmp_path, capsys):
    """``eval --out gs://...``: the reports are uploaded (results.json last), an existing report is refused
    without --overwrite, --append reads the bucket's results.json and adds a dataset, and a bucket PRED is refused
    by name (the images are read from local folders)."""
    from PIL import Image

    from xpsr_jax.cli import main as cli_main
    from xpsr_jax.eval.report import load_results

    rng = np.random.default_rng(0)
    for side in ("pred", "gt"):
        (tmp_path / side).mkdir()
        for name in ("a", "b"):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / side / f"{name}.png")
    report = f"gs://{BUCKET}/report"
    argv = ["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", report, "--metrics", "psnr,ssim",
            "--no-progress", "--name", "first"]
    assert cli_main(argv) == 0
    assert f"{report}/results.json" in capsys.readouterr().out  # the reports are named where they are
    names = {p.split("/")[-1] for p in _fs().ls(f"{BUCKET}/report")}
    assert {"results.json", "results.md", "results.csv", "index.html"} <= names
    assert [d["name"] for d in load_results(f"{report}/results.json")] == ["first"]

    assert cli_main(argv) == 2  # refused before any metric runs
    assert f"{report}/results.json already exists" in capsys.readouterr().err
    assert cli_main(argv[:-1] + ["second", "--append"]) == 0
    assert [d["name"] for d in load_results(f"{report}/results.json")] == ["first", "second"]

    assert cli_main(["eval", f"gs://{BUCKET}/pred", str(tmp_path / "gt"), "--out", str(tmp_path / "r")]) == 2
    assert f"PRED 'gs://{BUCKET}/pred': gs:// URLs are not supported here" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_sr_reads_weights_and_captions_from_a_bucket_and_uploads_each_image(gcs_env, tmp_path, capsys):
    """``sr LR/ gs://bucket/sr --weights gs://... --captions gs://...``: the same PNGs as the local run of the same
    command, each with its sidecar (the prompts from the bucket's caption store), ``failed.json`` for the corrupt
    input; existing outputs in the bucket are refused before the model loads unless --overwrite; a bucket INPUT
    is refused by name (images are read from local or mounted folders)."""
    from PIL import Image

    from xpsr_jax import paths
    from xpsr_jax.cli import main as cli_main
    from xpsr_jax.infer.tiny import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", seed=0)
    paths.upload_tree(ckpt, paths.as_path(f"gs://{BUCKET}/weights"), last=("xpsr.json",))
    store = tmp_path / "captions.jsonl"
    store.write_text(json.dumps({"id": "sub/b", "highlevel": "a red boat", "lowlevel": "noisy"}) + "\n")
    paths.upload_file(store, paths.as_path(f"gs://{BUCKET}/captions.jsonl"))
    lr = tmp_path / "lr"
    (lr / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png"):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(lr / name)
    (lr / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    common = ["--process-size", "64", "--steps", "2"]

    local = tmp_path / "out"
    assert cli_main(["sr", str(lr), str(local), "--weights", str(ckpt), "--captions", str(store), *common]) == 1
    out = f"gs://{BUCKET}/sr"
    argv = ["sr", str(lr), out, "--weights", f"gs://{BUCKET}/weights", "--captions", f"gs://{BUCKET}/captions.jsonl",
            *common]
    assert cli_main(argv) == 1  # the corrupt input
    fs = _fs()
    names = sorted(p[len(f"{BUCKET}/sr/"):] for p in fs.find(f"{BUCKET}/sr"))
    assert names == ["a.json", "a.png", "failed.json", "sub/b.json", "sub/b.png"]
    for name in ("a.png", "sub/b.png"):
        assert fs.cat(f"{BUCKET}/sr/{name}") == (local / name).read_bytes()
    meta = json.loads(fs.cat(f"{BUCKET}/sr/sub/b.json"))
    assert meta["prompts"]["positive_high"].startswith("a red boat") and meta["prompt_source"]["lowlevel"] == "captions"
    assert [f["path"].endswith("broken.png") for f in json.loads(fs.cat(f"{BUCKET}/sr/failed.json"))] == [True]

    capsys.readouterr()
    assert cli_main(argv) == 2
    assert f"{out}/a.png already exists (and 4 more output(s)); pass --overwrite" in capsys.readouterr().err
    (lr / "broken.png").unlink()
    assert cli_main(argv + ["--overwrite"]) == 0
    assert not _fs().exists(f"{BUCKET}/sr/failed.json")  # no longer true: removed (a fresh client: no cached listing)

    assert cli_main(["sr", f"gs://{BUCKET}/sr", str(tmp_path / "o2"), "--weights", str(ckpt)]) == 2
    assert f"INPUT 'gs://{BUCKET}/sr': gs:// URLs are not supported here" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_list_objects_and_local_copy_of_a_prefix(gcs_env, tmp_path):
    """``paths.list_objects`` lists a prefix's objects at every depth in one listing (after an upload by another
    client of the same process); ``paths.local_copy`` hands a local reader a temporary copy of the prefix, removed
    afterwards, and a local folder as itself."""
    from xpsr_jax import paths

    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.json").write_text('{"b": 1}')
    prefix = f"gs://{BUCKET}/tree"
    assert paths.list_objects(prefix) == []
    paths.upload_tree(src, paths.as_path(prefix))
    assert sorted(paths.list_objects(prefix)) == [f"{prefix}/a.txt", f"{prefix}/sub/b.json"]
    with paths.local_copy(prefix) as local:
        assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == ["a.txt",
                                                                                                  "sub/b.json"]
        assert (local / "sub" / "b.json").read_text() == '{"b": 1}'
    assert not local.exists()
    with paths.local_copy(src) as same:
        assert same == src
    with pytest.raises(ValueError, match="not a gs:// prefix"):
        paths.list_objects(str(src))

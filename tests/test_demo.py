"""``xpsr-jax demo`` end to end in a subprocess, at its smallest sizes.

One run covers every stage of the chain as a user starts it: the 8-device CPU mesh set up by the demo itself
(XLA_FLAGS removed from the environment), bundled photos, make-data degradation, captions from the tiny random
LLaVA, the captioned ArrayRecord dataset, one training step on the (data 4, fsdp 2) mesh, export to Flax and
PyTorch, the PyTorch reload with one denoiser call compared to JAX, x4 sampling of the held-out images, and the
evaluation reports. The sizes are reduced by flags (1 training step, 1 sampling step, 64 px training crops,
128 px held-out HR): most of the minutes are XLA compiles, which the sizes barely change. A second run with
--keep must reuse every stage, and a folder the demo did not write is never touched.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--steps", "1", "--sr-steps", "1", "--crop-size", "64", "--process-size", "64"]
STAGES = ("photos", "degrade", "caption", "dataset", "train", "export", "pytorch", "sr", "eval")


def demo(*args, timeout=1500):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the demo must ask for its 8 CPU devices itself
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-m", "xpsr_jax.cli", "demo", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = demo("--out", str(out), *SMALL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return out, proc.stdout


def test_every_stage_prints_its_line_and_records_its_time(run):
    out, stdout = run
    for k, name in enumerate(STAGES, 1):
        assert f"[{k}/{len(STAGES)}] {name}: done in " in stdout, name
    state = json.loads((out / "demo.json").read_text())
    assert list(state["stages"]) == list(STAGES)
    assert all(v["seconds"] > 0 for v in state["stages"].values())
    assert "random" in state["note"] and "random" in stdout  # the output says what the model is
    assert "on 8 CPU devices (data 4 x fsdp 2)" in state["stages"]["train"]["result"]
    assert "demo finished in" in stdout


def test_every_output_exists(run):
    out, _ = run
    for name in ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field"):
        assert (out / "photos" / "train" / f"{name}.png").is_file()
    assert list((out / "degraded" / "train" / "records").glob("train-*.array_record"))
    for side in ("LR", "HR"):
        assert sorted(p.stem for p in (out / "pairs" / "test" / side).glob("*.png")) == ["chelsea", "coffee"]
    assert list((out / "data" / "train" / "records").glob("train-*.array_record"))
    assert (out / "models" / "tiny-llava" / "config.json").is_file()
    assert (out / "run" / "checkpoints" / "1").is_dir() and (out / "run" / "metrics.jsonl").is_file()
    assert (out / "weights" / "flax" / "xpsr.json").is_file()
    for sub in ("unet", "controlnet"):
        assert (out / "weights" / "torch" / sub / "diffusion_pytorch_model.safetensors").is_file()
    for stem in ("chelsea", "coffee"):
        assert (out / "sr" / f"{stem}.png").is_file() and (out / "sr" / f"{stem}.json").is_file()
    for f in ("index.html", "results.md", "results.csv", "results.json", "per_image.csv"):
        assert (out / "report" / f).is_file(), f


def test_captions_reach_the_dataset_and_the_sampler(run):
    out, _ = run
    records = [json.loads(line) for line in (out / "captions" / "train.jsonl").read_text().splitlines()]
    assert all(r["lowlevel"] and r["highlevel_hr"] for r in records)
    summary = json.loads((out / "data" / "train" / "summary.json").read_text())
    assert summary["host_totals"]["captions"]["joined"] == 8
    # captions were made from the degraded records; the dataset is written a second time, with the captions:
    # its pairs must be the ones that were captioned, each with its own copy's prompt
    from xpsr_jax.data.pipeline import records_source
    from xpsr_jax.data.records import parse

    captioned = {f"{r['id']}#{r['epoch']}": r for r in map(parse, records_source(out / "degraded" / "train"))}
    assert sorted(r["id"] for r in records) == sorted(captioned) and len(captioned) == 8  # 4 photos x 2 copies
    for rec in map(parse, records_source(out / "data" / "train")):
        key = f"{rec['id']}#{rec['epoch']}"
        assert (rec["lr"], rec["hr"]) == (captioned[key]["lr"], captioned[key]["hr"]), key
        # make-data keeps the first line, lstripped, as the official reader did
        assert rec["lowlevel"] == next(r["lowlevel"] for r in records if r["id"] == key).lstrip()
    sidecar = json.loads((out / "sr" / "chelsea.json").read_text())
    assert sidecar["prompt_source"] == {"highlevel": "captions", "lowlevel": "captions"}
    assert sidecar["settings"]["steps"] == 1 and sidecar["sizes"]["output"] == [128, 128]


def test_pytorch_reload_matches_jax(run):
    out, _ = run
    check = json.loads((out / "weights" / "pytorch_check.json").read_text())
    assert check["ok"] and check["max_abs_diff_over_max_abs"] <= 1e-4


def test_report_has_numbers(run):
    out, stdout = run
    from xpsr_jax.eval.report import load_results

    datasets = load_results(out / "report" / "results.json")
    assert len(datasets) == 2  # the tiny model and the bicubic reference
    for d in datasets:
        assert d["n_evaluated"] == 2
        for metric in ("psnr", "ssim", "lpips"):
            assert math.isfinite(d["summary"][metric]), (d["name"], metric)
    html = (out / "report" / "index.html").read_text()
    tiny = next(d for d in datasets if "tiny" in d["name"])
    assert f"{tiny['summary']['psnr']:.4f}" in html
    assert "PSNR" in stdout and "LPIPS" in stdout


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")
            if p.is_file()}


def test_keep_reuses_every_finished_stage(run):
    """Nothing is trained, sampled or written again: every output file keeps its bytes and its modification
    time; only the demo's own state file is rewritten."""
    out, _ = run
    before = _files(out)
    proc = demo("--out", str(out), "--keep", *SMALL, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(": reused (") == len(STAGES)
    after = _files(out)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == ["demo.json"]


def test_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    proc = demo("--out", str(tmp_path), timeout=300)
    assert proc.returncode == 2 and "did not write" in proc.stderr
    assert (tmp_path / "thesis.tex").read_text() == "precious"


_LAZY_PROBE = """
import sys
import numpy as np
from PIL import Image
from etils import epy

if sys.argv[2] == "finish":
    from xpsr_jax.demo_stages import _finish_lazy_imports
    _finish_lazy_imports()
entered, real = [], epy.lazy_imports
def spy(*args, **kwargs):
    entered.append(1)
    return real(*args, **kwargs)
epy.lazy_imports = spy
root = sys.argv[1]
Image.fromarray(np.full((80, 80, 3), 99, np.uint8)).save(root + "/hr/a.png")
from xpsr_jax.data.make_data import MakeDataConfig, make_data
from xpsr_jax.data.pipeline import PipelineConfig, make_iterator, records_source
make_data(MakeDataConfig(source=root + "/hr", out=root + "/out", crop_size=64, progress=False))
next(make_iterator(records_source(root + "/out"), PipelineConfig(batch_size=1), process_index=0, process_count=1))
print("lazy_imports blocks entered:", len(entered))
"""


@pytest.mark.parametrize("finish", [True, False])
def test_data_stages_enter_no_lazy_import_block_once_finished(tmp_path, finish):
    """While the demo compiles in a thread, the data stages must not run etils' lazy_imports() (it swaps
    builtins.__import__ for every thread, and JAX imports while tracing). Without the early imports they do (the
    probe's control), after them they do not."""
    (tmp_path / "hr").mkdir()
    proc = subprocess.run([sys.executable, "-c", _LAZY_PROBE, str(tmp_path), "finish" if finish else "plain"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entered = int(proc.stdout.rsplit(":", 1)[1])
    assert (entered == 0) if finish else (entered > 0)

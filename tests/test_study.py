"""``xpsr-jax study run`` / ``study report`` end to end on configs/studies/tiny.py (2 rows x 2 seeds, 2 training
steps, 1 sampling step, the demo's two held-out photos): every run trains with the session's one compiled step,
exports, super-resolves and evaluates; a run killed in the middle resumes without redoing finished stages; the
report shows mean ± std over seeds, the published numbers, the change against the baseline, the training curves,
and every missing metric with its reason. The paper's pyiqa metrics run through a stand-in pyiqa module."""

from __future__ import annotations

import json
import statistics
import sys
import types
from pathlib import Path

import pytest

from xpsr_jax.study import runner as study_runner
from xpsr_jax.study.spec import load_spec
from xpsr_jax.study.trainers import TrainerCache

ROOT = Path(__file__).resolve().parents[1]
TINY_SPEC = ROOT / "configs" / "studies" / "tiny.py"
RUN_IDS = ["full-seed0", "full-seed1", "no_highlevel-seed0", "no_highlevel-seed1"]
CLIPIQA, MUSIQ = 0.5, 42.0  # what the stand-in pyiqa scores every image


class Killed(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way catches it."""


def fake_pyiqa():
    """pyiqa as the eval layer meets it: CLIPIQA and MUSIQ run, MANIQA wants to download its weights, LIQE fails
    to build."""
    import torch

    module = types.ModuleType("pyiqa")
    module.__version__ = "0.1.10"

    def create_metric(name, device="cpu", as_loss=False):
        if name == "maniqa":
            torch.hub.download_url_to_file("https://weights.invalid/ckpt_koniq10k.pt", "/hub/ckpt_koniq10k.pt")
        if name == "liqe":
            raise KeyError("liqe")
        value = {"clipiqa": CLIPIQA, "musiq": MUSIQ}[name]
        return lambda target, ref=None: torch.tensor([[value]])

    module.create_metric = create_metric
    return module


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_trainer):
    """The tiny study run twice in one folder: first killed in the sampling stage of its third run, then
    resumed. Yields what both attempts left (files' mtimes, logs, the report of the half-done study)."""
    mp = pytest.MonkeyPatch()
    mp.setitem(sys.modules, "pyiqa", fake_pyiqa())
    import xpsr_jax.train.trainer as trainer_module

    def no_compile(*a, **k):
        raise AssertionError("the study compiled a train step of its own")

    mp.setattr(trainer_module, "create_trainer", no_compile)
    workdir = tmp_path_factory.mktemp("study")
    spec = load_spec(TINY_SPEC)
    cache = TrainerCache()
    cache.add(tiny_trainer)  # the session's compiled step: the study must find it fits all four runs
    logs = []
    original_sr = study_runner.StudyRunner.super_resolve

    def killed_at_third_run(self, pipeline, config, t, paths):
        if paths.root.name == RUN_IDS[2]:
            raise Killed()
        return original_sr(self, pipeline, config, t, paths)

    mp.setattr(study_runner.StudyRunner, "super_resolve", killed_at_third_run)
    with pytest.raises(Killed):
        study_runner.StudyRunner(spec, workdir, cache, log=logs.append).run()
    mp.setattr(study_runner.StudyRunner, "super_resolve", original_sr)
    before = snapshot(workdir)
    before_stages = state(workdir, RUN_IDS[2])
    assert set(before_stages) == {"train", "export"}

    from xpsr_jax.study.report import write_report

    half = write_report(workdir, workdir / "report-half")["markdown"].read_text(encoding="utf-8")
    resumed_logs = []
    outcome = study_runner.StudyRunner(spec, workdir, cache, log=resumed_logs.append).run()
    yield types.SimpleNamespace(workdir=workdir, spec=spec, cache=cache, logs=logs, resumed_logs=resumed_logs,
                                outcome=outcome, before=before, before_stages=before_stages,
                                half_report=half)
    mp.undo()


def snapshot(workdir: Path) -> dict[str, int]:
    """mtime (ns) of every file under the runs."""
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in (workdir / "runs").rglob("*") if p.is_file()}


def state(workdir: Path, run_id: str) -> dict:
    return json.loads((workdir / "runs" / run_id / "state.json").read_text())["stages"]


@pytest.mark.e2e
def test_every_run_finishes_every_stage_with_one_compiled_step(study):
    assert study.outcome == {r: "done" for r in RUN_IDS}
    assert study.cache.compiled == 0
    for run_id in RUN_IDS:
        stages = state(study.workdir, run_id)
        assert set(stages) == {"train", "export", "sr/photos", "eval/photos"}
        assert stages["train"]["step"] == 2 and stages["export"]["step"] == 2
        assert stages["sr/photos"]["images"] == 2
        results = json.loads((study.workdir / "runs" / run_id / "eval" / "photos" / "results.json").read_text())
        [dataset] = results["datasets"]
        assert dataset["n_evaluated"] == 2
        assert dataset["summary"]["clipiqa"] == pytest.approx(CLIPIQA)  # through the stand-in pyiqa
        assert "ckpt_koniq10k.pt" in dataset["unavailable"]["maniqa"]


@pytest.mark.e2e
def test_the_seeds_are_different_runs(study):
    def losses(run_id):
        lines = (study.workdir / "runs" / run_id / "train" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    first, second = losses("full-seed0"), losses("full-seed1")
    assert len(first) == len(second) == 2 and first != second


@pytest.mark.e2e
def test_the_ablation_samples_without_the_high_level_prompt(study):
    full = json.loads((study.workdir / "runs/full-seed0/sr/photos/chelsea.json").read_text())
    ablation = json.loads((study.workdir / "runs/no_highlevel-seed0/sr/photos/chelsea.json").read_text())
    assert full["prompt_source"] == {"highlevel": "official", "lowlevel": "official"}
    assert ablation["prompt_source"] == {"highlevel": "flag", "lowlevel": "official"}


@pytest.mark.e2e
def test_a_killed_study_resumes_without_redoing_finished_stages(study):
    killed = RUN_IDS[2]
    after = snapshot(study.workdir)
    # the first two runs and the killed run's finished stages: not one file rewritten (but the killed run's
    # state.json, which gained its new stages)
    for path, mtime in study.before.items():
        if path != f"runs/{killed}/state.json":
            assert after[path] == mtime, path
    assert any(p.startswith(f"runs/{killed}/train/checkpoints/") for p in study.before)
    assert study.before_stages["train"] == state(study.workdir, killed)["train"]
    assert study.before_stages["export"] == state(study.workdir, killed)["export"]
    skipped = [line for line in study.resumed_logs if line.endswith("done before, skipped")]
    assert len(skipped) == 2 * 4 + 2  # two whole runs, and train + export of the killed one
    assert f"{killed}: train: done before, skipped" in study.resumed_logs
    assert not any(line.startswith(f"{killed}: sr") for line in study.logs)
    assert any(line.startswith(f"{killed}: sr/photos: done in") for line in study.resumed_logs)
    # the half-done study's report names what is missing and why
    assert "has not finished its sr/photos stage" in study.half_report and killed in study.half_report


@pytest.mark.e2e
def test_report_puts_published_numbers_beside_mean_and_std_with_curves(study):
    from xpsr_jax.cli import main

    assert main(["study", "report", str(study.workdir)]) == 0
    report = study.workdir / "report"
    md, page = (report / "study.md").read_text(), (report / "index.html").read_text()
    psnr = {}
    for run_id in RUN_IDS:
        doc = json.loads((study.workdir / "runs" / run_id / "eval/photos/results.json").read_text())
        psnr[run_id] = doc["datasets"][0]["summary"]["psnr"]
    full = [psnr["full-seed0"], psnr["full-seed1"]]
    cell = f"{statistics.mean(full):.4f} ± {statistics.stdev(full):.4f} (paper 20.0000)"
    assert f"| tiny XPSR | 2 | {cell} |" in md
    delta = statistics.mean([psnr["no_highlevel-seed0"], psnr["no_highlevel-seed1"]]) - statistics.mean(full)
    assert f"{delta:+.4f} (paper -0.5000)" in md
    assert "Published numbers: none for this toy study" in md
    assert "Columns that could not be computed for any run: MANIQA, LIQE." in md
    assert "ckpt_koniq10k.pt" in md and "could not create it: KeyError" in md
    assert f"{CLIPIQA:.4f} ± 0.0000" in md
    for name in ("loss", "mse"):
        assert f"](curves/{name}.png)" in md and f"src='curves/{name}.png'" in page
        from PIL import Image

        with Image.open(report / "curves" / f"{name}.png") as im:
            assert im.format == "PNG" and im.size == (700, 400)
    assert "<td class='missing'>missing" in page


def test_cli_refuses_an_unknown_run_before_any_work(tmp_path, capsys):
    from xpsr_jax.cli import main

    assert main(["study", "run", str(TINY_SPEC), "--workdir", str(tmp_path / "w"), "--only", "nope"]) == 2
    assert "--only nope: not a run of study 'tiny'" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
    assert main(["study", "report", str(tmp_path)]) == 2  # not a study folder


def test_report_arithmetic_on_a_hand_made_study(tmp_path):
    """Known values in, known table out: no training, no JAX. PSNR of the full row's seeds 20 and 22 -> 21.0000 ±
    1.4142; the ablation's 19 and 19 -> change -2.0000; MUSIQ computed for one seed only -> n=1/2; a run whose
    eval never finished names the stage."""
    from xpsr_jax.eval.evaluate import FORMAT
    from xpsr_jax.files import atomic_write_json
    from xpsr_jax.study.report import write_report
    from xpsr_jax.study.runner import STUDY_JSON
    from xpsr_jax.study.state import RunState

    spec = load_spec(TINY_SPEC)
    atomic_write_json(tmp_path / STUDY_JSON, spec.to_json())
    psnr = {"full-seed0": 20.0, "full-seed1": 22.0, "no_highlevel-seed0": 19.0, "no_highlevel-seed1": 19.0}
    for run_id, value in psnr.items():
        run = tmp_path / "runs" / run_id
        for stage in ("train", "export", "sr/photos", "eval/photos"):
            RunState(run, run_id).mark(stage, step=2)
        summary = {"psnr": value, "ssim": 0.5, "lpips": 0.25}
        unavailable = {"clipiqa": "no weights", "maniqa": "no weights", "liqe": "no weights"}
        if run_id == "full-seed0":
            summary["musiq"] = 50.0
        else:
            unavailable["musiq"] = "no weights"
        (run / "eval" / "photos").mkdir(parents=True)
        atomic_write_json(run / "eval" / "photos" / "results.json", {"format": FORMAT, "datasets": [
            {"name": "photos", "metrics": list(spec.metrics), "summary": summary, "images": [],
             "unavailable": unavailable}]})
        (run / "train").mkdir()
        (run / "train" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.5}\n{"step": 2, "loss": 1.25}\n')
    unfinished = RunState(tmp_path / "runs" / "no_highlevel-seed1", "no_highlevel-seed1")
    del unfinished.stages["eval/photos"]
    unfinished.mark("train", step=2)  # rewritten without the eval marker

    md = write_report(tmp_path)["markdown"].read_text(encoding="utf-8")
    assert "| tiny XPSR | 2 | 21.0000 ± 1.4142 (paper 20.0000) | 0.5000 ± 0.0000 | 0.2500 ± 0.0000 | missing |" \
           " 50.0000 (n=1/2) | missing | missing |" in md
    assert "| tiny, w/o high-level prompt | 1 | 19.0000 (n=1/2) (paper 19.5000) |" in md
    assert "| tiny, w/o high-level prompt | -2.0000 (paper -0.5000) | +0.0000 | +0.0000 | n/a | n/a | n/a | n/a |" in md
    assert "Columns that could not be computed for any run: CLIPIQA, MANIQA, LIQE." in md
    assert ("PSNR, SSIM, LPIPS, CLIPIQA, MUSIQ, MANIQA, LIQE on photos (no_highlevel-seed1): the run has not "
            "finished its eval/photos stage") in md
    assert "MUSIQ on photos (full-seed1, no_highlevel-seed0): no weights" in md
    assert (tmp_path / "report" / "curves" / "loss.png").stat().st_size > 0

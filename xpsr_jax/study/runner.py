"""``xpsr-jax study run``: every run of a spec (row x seed) through its stages, each skipped when its marker says
it finished (:mod:`.state`):

1. ``train``: :func:`~xpsr_jax.train.loop.train_and_evaluate` into ``RUN/train`` (resumes from its checkpoints;
   a run already trained to ``num_train_steps``, here or by ``xpsr-jax train --workdir RUN/train`` on a pod, is
   reused as it is). Runs with the same program share one compiled step (:mod:`.trainers`).
2. ``export``: the last checkpoint -> a Flax checkpoint in ``RUN/weights`` (what ``xpsr-jax export`` writes).
3. ``sr/<test set>``: the test set's LR images super-resolved into ``RUN/sr/<test set>`` (what ``xpsr-jax sr``
   writes; images already written are kept, so a killed stage resumes image by image).
4. ``eval/<test set>``: ``RUN/eval/<test set>/results.json`` and friends (what ``xpsr-jax eval`` writes).

Study folder ``W``: ``study.json`` (the spec as data, what ``study report`` reads), ``runs/<row>-seed<N>/``,
``testsets/`` (test sets a spec builds itself). Everything runs in this process.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from xpsr_jax.errors import XPSRError
from xpsr_jax.files import atomic_write_json
from xpsr_jax.study.spec import RunKey, SpecError, StudySpec, TestSet
from xpsr_jax.study.state import RunState
from xpsr_jax.study.trainers import TrainerCache

STUDY_JSON = "study.json"


class StageError(XPSRError, RuntimeError):
    """A stage of a run produced nothing usable; the message names the run and the stage."""


@dataclasses.dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    def sr(self, test_set: str) -> Path:
        return self.root / "sr" / test_set

    def eval(self, test_set: str) -> Path:
        return self.root / "eval" / test_set


def run_paths(workdir: Path, run_id: str) -> RunPaths:
    return RunPaths(Path(workdir) / "runs" / run_id)


@dataclasses.dataclass(frozen=True)
class TestSetFolders:
    lr: Path
    hr: Path
    captions: Path | None


def test_set_folders(test_set: TestSet, workdir: Path) -> TestSetFolders:
    """Relative folders of a test set that builds itself live in the study's folder, the others in the current
    directory."""
    base = Path(workdir) if test_set.build is not None else Path.cwd()
    lr, hr = base / test_set.lr_dir, base / test_set.hr_dir
    return TestSetFolders(lr, hr, base / test_set.captions if test_set.captions else None)


class StudyRunner:
    """Runs a spec's runs in ``workdir``; ``log`` gets one line per stage."""

    def __init__(self, spec: StudySpec, workdir: str | Path, trainers: TrainerCache | None = None,
                 config_overrides: tuple[str, ...] = (), log: Callable[[str], None] = print):
        self.spec = spec
        self.workdir = Path(workdir)
        self.trainers = trainers or TrainerCache()
        self.extra_overrides = tuple(config_overrides)  # --config.KEY=VALUE from the command line, last
        self.log = log

    # ------------------------------------------------------------------------------------------------- setup

    def prepare(self, only: tuple[str, ...] = ()) -> list[tuple[RunKey, object]]:
        """Everything that can fail before any work: the runs asked for, the study folder, the test sets, every
        run's config."""
        keys = self.spec.run_list(only)
        self._write_study_json()
        for t in self.spec.test_sets:
            folders = test_set_folders(t, self.workdir)
            built = self.workdir / "testsets" / f".{t.name}.built"
            if t.build is not None and not built.is_file():  # (again, if a build was killed half way)
                t.build(folders.lr, folders.hr)
                built.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(built, {"lr": str(folders.lr), "hr": str(folders.hr)})
            for what, folder in (("LR", folders.lr), ("HR", folders.hr)):
                if not folder.is_dir():
                    raise SpecError(f"test set {t.name!r}: {what} folder {folder} does not exist")
            if folders.captions is not None and not folders.captions.is_file():
                raise SpecError(f"test set {t.name!r}: caption store {folders.captions} does not exist")
        return [(key, self.config(key)) for key in keys]

    def config(self, key: RunKey):
        from xpsr_jax.train.cli import check_config, load_config

        overrides = self.spec.config_overrides(key) + list(self.extra_overrides)
        try:
            config = load_config(self.spec.config_path(key.row), overrides)
        except SystemExit as e:  # load_config's way of naming a bad override
            raise SpecError(f"run {key.run_id}: {e.code}") from None
        check_config(config)
        return config

    def _write_study_json(self) -> None:
        path = self.workdir / STUDY_JSON
        doc = self.spec.to_json()
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            if old.get("name") != doc["name"]:
                raise SpecError(f"{self.workdir} holds study {old.get('name')!r}, not {doc['name']!r}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, doc)

    # ------------------------------------------------------------------------------------------------- runs

    def run(self, only: tuple[str, ...] = ()) -> dict[str, str]:
        """Every selected run to the end; run id -> "done" or the error that stopped it (the other runs go on)."""
        outcome = {}
        for key, config in self.prepare(only):
            try:
                self.run_one(key, config)
                outcome[key.run_id] = "done"
            except Exception as e:  # noqa: BLE001 - one failed run must not stop a study of many
                outcome[key.run_id] = f"{type(e).__name__}: {e}"
                self.log(f"{key.run_id}: failed: {outcome[key.run_id]}")
        return outcome

    def run_one(self, key: RunKey, config) -> None:
        paths = run_paths(self.workdir, key.run_id)
        state = RunState(paths.root, key.run_id)
        self._stage(state, "train", lambda: self.train(config, paths))
        self._stage(state, "export", lambda: self.export(paths))
        pipeline = None
        for t in self.spec.test_sets:
            if not state.done(f"sr/{t.name}"):
                pipeline = pipeline or self.load_pipeline(paths, key)
            self._stage(state, f"sr/{t.name}", lambda t=t: self.super_resolve(pipeline, config, t, paths))
            self._stage(state, f"eval/{t.name}", lambda t=t: self.evaluate(key, t, paths))

    def _stage(self, state: RunState, stage: str, work: Callable[[], dict]) -> None:
        name = f"{state.doc['run']}: {stage}"
        if state.done(stage):
            self.log(f"{name}: done before, skipped")
            return
        t0 = time.perf_counter()
        info = work()
        seconds = round(time.perf_counter() - t0, 1)
        state.mark(stage, seconds=seconds, **info)
        self.log(f"{name}: done in {seconds} s " + json.dumps(info))

    # ------------------------------------------------------------------------------------------------- stages

    def train(self, config, paths: RunPaths) -> dict:
        from xpsr_jax.train.checkpoints import RunCheckpoints
        from xpsr_jax.train.loop import train_and_evaluate

        ckpts = RunCheckpoints(paths.train / "checkpoints", save_every=0, keep=1_000_000)
        try:
            latest = ckpts.latest_step()
        finally:
            ckpts.close()
        if latest is not None and latest >= config.num_train_steps:  # trained already: reuse it as it is
            return {"step": int(latest), "reused": True}
        summary = train_and_evaluate(config, paths.train, trainer=self.trainers.get(config))
        losses = summary.losses
        info = {"step": summary.end_step}
        if losses:
            info.update(first_loss=losses[min(losses)], last_loss=losses[max(losses)])
        if summary.preempted:
            raise StageError(f"training stopped by SIGTERM at step {summary.end_step}; rerun to resume")
        return info

    def export(self, paths: RunPaths) -> dict:
        from xpsr_jax.train.export import export_run

        # a folder left by an export that was killed is replaced (its marker was never written)
        export_run(paths.train, paths.weights, overwrite=True)
        meta = json.loads((paths.weights / "xpsr.json").read_text(encoding="utf-8"))
        return {"step": meta["source"]["step"]}

    def sampling_settings(self, key: RunKey):
        from xpsr_jax.infer.settings import SRSettings

        return SRSettings(**{**self.spec.sampling, "seed": key.seed})

    def load_pipeline(self, paths: RunPaths, key: RunKey):
        from xpsr_jax.infer.pipeline import SRPipeline

        return SRPipeline.from_pretrained(paths.weights, self.sampling_settings(key))

    def super_resolve(self, pipeline, config, t: TestSet, paths: RunPaths) -> dict:
        from xpsr_jax.captions.store import CaptionStore
        from xpsr_jax.infer.inputs import PromptFinder, discover
        from xpsr_jax.infer.runner import SRRunner, output_paths

        folders = test_set_folders(t, self.workdir)
        items, problems = discover([folders.lr])
        if problems:
            raise StageError(f"test set {t.name!r}: {problems[:3]}")
        store = CaptionStore.open(folders.captions) if folders.captions else None
        # the ablation without the high-level prompt samples without it too (its training never saw one)
        high = "" if config.model.highlevel_prompt == "none" else None
        runner = SRRunner(pipeline.with_settings(upscale=t.upscale), PromptFinder(high, None, store))
        out = paths.sr(t.name)
        todo = [i for i in items if not all(p.is_file() for p in output_paths(i, out))]
        report = runner.run_items(todo, [], out, progress=False)
        if report.failed:
            raise StageError(f"super-resolving {t.name!r} failed for {len(report.failed)} image(s): "
                             f"{report.failed[:3]}")
        return {"images": len(items), "written": report.written, "kept": len(items) - len(todo),
                "no_prompt": report.no_prompt}

    def evaluate(self, key: RunKey, t: TestSet, paths: RunPaths) -> dict:
        from xpsr_jax.eval.evaluate import EvalConfig, RunInfo, evaluate_dataset
        from xpsr_jax.eval.report import write_reports

        folders = test_set_folders(t, self.workdir)
        settings = self.sampling_settings(key).replace(upscale=t.upscale)
        run = RunInfo(model_variant=f"{self.spec.name}: {key.row.label} (seed {key.seed})",
                      colour_fix=settings.color_fix,
                      extra={"run": key.run_id, "steps": str(settings.steps),
                             "process_size": str(settings.process_size), "seed": str(key.seed)})
        result = evaluate_dataset(paths.sr(t.name), folders.hr, lr_dir=folders.lr, name=t.name,
                                  config=EvalConfig(metrics=self.spec.metrics), run=run, progress=False)
        if result["n_evaluated"] == 0:
            raise StageError(f"no image of {t.name!r} could be evaluated: {result['mismatches'][:3]}")
        write_reports([result], paths.eval(t.name), html=False)
        return {"evaluated": result["n_evaluated"], "unavailable": sorted(result["unavailable"])}

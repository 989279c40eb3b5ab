"""A study folder's numbers, gathered for the report: per row x test set x metric the values over seeds (mean,
sample standard deviation), the published number, the change against the baseline row, and for every value that
is missing the reason why (a run that has not finished, a metric that could not be computed)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from xpsr_jax.study.runner import STUDY_JSON, run_paths
from xpsr_jax.study.spec import StudySpec
from xpsr_jax.study.state import RunState


@dataclasses.dataclass
class Cell:
    """One row x test set x metric: the values of the seeds that have one, the reasons of those that do not."""

    values: list[float] = dataclasses.field(default_factory=list)
    missing: dict[str, str] = dataclasses.field(default_factory=dict)  # run id -> reason
    published: float | None = None

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (n - 1); None for fewer than two values."""
        n = len(self.values)
        if n < 2 or not all(math.isfinite(v) for v in self.values):
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (n - 1))


@dataclasses.dataclass
class StudyResults:
    spec: StudySpec
    cells: dict[tuple[str, str, str], Cell]  # (row, test set, metric)
    stages: dict[str, dict]  # run id -> its stage markers

    def cell(self, row: str, test_set: str, metric: str) -> Cell:
        return self.cells[(row, test_set, metric)]

    def change(self, row: str, test_set: str, metric: str) -> tuple[float | None, float | None]:
        """(measured, published) difference of ``row`` against the baseline row; None where a side is missing."""
        base = self.cell(self.spec.baseline_row, test_set, metric)
        this = self.cell(row, test_set, metric)
        measured = this.mean - base.mean if this.mean is not None and base.mean is not None else None
        published = (this.published - base.published
                     if this.published is not None and base.published is not None else None)
        return measured, published


def load_study(workdir: str | Path) -> StudySpec:
    path = Path(workdir) / STUDY_JSON
    if not path.is_file():
        from xpsr_jax.errors import InputNotFoundError

        raise InputNotFoundError(f"{workdir}: not a study folder (no {STUDY_JSON}; `xpsr-jax study run` writes it)")
    return StudySpec.from_json(json.loads(path.read_text(encoding="utf-8")))


def collect(workdir: str | Path) -> StudyResults:
    from xpsr_jax.eval.report import RESULTS_JSON, load_results

    spec = load_study(workdir)
    published = {(p.row, p.test_set, p.metric): p.value for p in spec.published}
    cells = {(r.name, t.name, m): Cell(published=published.get((r.name, t.name, m)))
             for r in spec.rows for t in spec.test_sets for m in spec.metrics}
    stages = {}
    for key in spec.run_list():
        paths = run_paths(workdir, key.run_id)
        state = RunState(paths.root, key.run_id)
        stages[key.run_id] = state.stages
        for t in spec.test_sets:
            results_path = paths.eval(t.name) / RESULTS_JSON
            if not state.done(f"eval/{t.name}") or not results_path.is_file():
                why = _not_finished(state, t.name)
                for m in spec.metrics:
                    cells[(key.row.name, t.name, m)].missing[key.run_id] = why
                continue
            [result] = load_results(results_path)
            for m in spec.metrics:
                cell = cells[(key.row.name, t.name, m)]
                value = result["summary"].get(m)
                if value is not None:
                    cell.values.append(float(value))
                else:
                    cell.missing[key.run_id] = result["unavailable"].get(m, "no image had a value")
    return StudyResults(spec, cells, stages)


def _not_finished(state: RunState, test_set: str) -> str:
    for stage in ("train", "export", f"sr/{test_set}", f"eval/{test_set}"):
        if not state.done(stage):
            return f"the run has not finished its {stage} stage"
    return "its evaluation report is missing"


def training_curves(workdir: str | Path, spec: StudySpec) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """run id -> metric (loss, mse, dfc_latent, dfc_rgb, ...) -> [(step, value)] from ``metrics.jsonl``; a step
    logged twice (a resumed run) keeps its last value."""
    curves = {}
    for key in spec.run_list():
        path = run_paths(workdir, key.run_id).train / "metrics.jsonl"
        if not path.is_file():
            continue
        by_metric: dict[str, dict[int, float]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            step = row.get("step")
            for name, value in row.items():
                if name != "step" and isinstance(value, (int, float)) and isinstance(step, int):
                    by_metric.setdefault(name, {})[step] = float(value)
        curves[key.run_id] = {m: sorted(v.items()) for m, v in by_metric.items()}
    return curves

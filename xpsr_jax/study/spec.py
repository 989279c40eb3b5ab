"""What a reproduction study is: rows (a training config plus overrides), seeds, test sets, metrics, sampling
settings and the published numbers to hold the results against.

A spec file (``configs/studies/ablations.py``) defines ``get_spec() -> StudySpec``. The spec travels into the
study's folder as ``study.json`` (:meth:`StudySpec.to_json`), so ``xpsr-jax study report W`` needs only ``W``.

    >>> spec = load_spec("configs/studies/ablations.py")
    >>> [r.run_id for r in spec.run_list()]          # ['full-seed0', 'full-seed1', ..., 'no_dfc-seed2']
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from xpsr_jax.errors import UsageError

# The paper's no-reference metrics (through pyiqa when it and its weights are installed) and the three that
# always run; see xpsr_jax/eval/optional.py.
PAPER_METRICS = ("psnr", "ssim", "lpips", "clipiqa", "musiq", "maniqa", "liqe")


class SpecError(UsageError, ValueError):
    """A study spec that cannot work; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One configuration of the study (a row of its table).

    ``config``: a bundled config name (``xpsr_sd15``, ``ablation_sequential``) or a config file, relative to the
    spec file's folder; ``overrides``: dotted config keys -> values, as ``--config.KEY=VALUE`` would set them.
    """

    name: str
    label: str
    config: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TestSet:
    """LR images (``lr_dir``, prompt folders beside it in the official layout, or a caption store) and their HR.

    Relative folders are taken from the current directory, or from the study's folder when ``build`` is given:
    ``build(lr_dir, hr_dir)`` writes a test set that does not exist yet (the tiny spec's photos).
    """

    __test__ = False  # a name pytest would otherwise try to collect

    name: str
    lr_dir: str
    hr_dir: str
    upscale: float = 4.0
    captions: str | None = None
    build: Callable[[Path, Path], None] | None = None


@dataclasses.dataclass(frozen=True)
class Published:
    """A number from the paper: ``row`` and ``test_set`` name the spec's, ``metric`` an eval metric."""

    row: str
    test_set: str
    metric: str
    value: float


@dataclasses.dataclass(frozen=True)
class RunKey:
    """One run of the study: a row trained with one seed."""

    row: Row
    seed: int

    @property
    def run_id(self) -> str:
        return f"{self.row.name}-seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class StudySpec:
    name: str
    rows: tuple[Row, ...]
    seeds: tuple[int, ...]
    test_sets: tuple[TestSet, ...]
    metrics: tuple[str, ...] = PAPER_METRICS
    # xpsr_jax.infer.settings.SRSettings fields for every test set (upscale comes from the test set); the run's
    # seed is the sampling seed too
    sampling: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # applied to every row, before its own
    baseline: str = ""  # the row the others are compared with ("" = the first)
    published: tuple[Published, ...] = ()
    published_source: str = ""
    folder: Path | None = None  # where the spec file lies (configs named by path are relative to it)

    def __post_init__(self):
        self.check()

    @property
    def baseline_row(self) -> str:
        return self.baseline or self.rows[0].name

    def run_list(self, only: tuple[str, ...] = ()) -> list[RunKey]:
        """Every row x seed, or those whose run id or row name is in ``only`` (SpecError names unknown ones)."""
        runs = [RunKey(r, s) for r in self.rows for s in self.seeds]
        if not only:
            return runs
        known = {k.run_id for k in runs} | {r.name for r in self.rows}
        unknown = [o for o in only if o not in known]
        if unknown:
            raise SpecError(f"--only {', '.join(unknown)}: not a run of study {self.name!r} "
                            f"(runs: {', '.join(k.run_id for k in runs)})")
        return [k for k in runs if k.run_id in only or k.row.name in only]

    def config_overrides(self, key: RunKey) -> list[str]:
        """The run's ``--config.KEY=VALUE`` strings: the study's, the row's, then its seed."""
        items = {**self.overrides, **key.row.overrides, "seed": key.seed}
        return [f"--config.{k}={v!r}" for k, v in items.items()]

    def config_path(self, row: Row) -> str:
        if row.config.endswith(".py") and self.folder is not None and not Path(row.config).is_absolute():
            return str((self.folder / row.config).resolve())
        return row.config

    def check(self) -> None:
        from xpsr_jax.eval.evaluate import METRICS

        if not self.rows or not self.seeds or not self.test_sets:
            raise SpecError(f"study {self.name!r} needs at least one row, one seed and one test set")
        for kind, names in (("row", [r.name for r in self.rows]), ("test set", [t.name for t in self.test_sets])):
            if len(set(names)) != len(names):
                raise SpecError(f"study {self.name!r}: {kind} names repeat ({names})")
            bad = [n for n in names if not n or "/" in n or n.startswith(".")]
            if bad:
                raise SpecError(f"study {self.name!r}: {kind} name {bad[0]!r} cannot name a folder")
        if len(set(self.seeds)) != len(self.seeds):
            raise SpecError(f"study {self.name!r}: seeds repeat ({self.seeds})")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise SpecError(f"study {self.name!r}: unknown metric {unknown[0]!r} (known: {', '.join(METRICS)})")
        rows, sets = {r.name for r in self.rows}, {t.name for t in self.test_sets}
        if self.baseline and self.baseline not in rows:
            raise SpecError(f"study {self.name!r}: baseline {self.baseline!r} is not a row")
        for p in self.published:
            if p.row not in rows or p.test_set not in sets or p.metric not in METRICS:
                raise SpecError(f"study {self.name!r}: published number {p} names an unknown row, test set or metric")
        if self.published and not self.published_source:
            raise SpecError(f"study {self.name!r}: published numbers need their source (published_source)")

    def to_json(self) -> dict:
        """What ``study report`` needs, as JSON (test-set builders and folders are not part of it)."""
        return {
            "name": self.name,
            "rows": [{"name": r.name, "label": r.label, "config": r.config, "overrides": dict(r.overrides)}
                     for r in self.rows],
            "seeds": list(self.seeds),
            "test_sets": [{"name": t.name, "lr_dir": t.lr_dir, "hr_dir": t.hr_dir, "upscale": t.upscale,
                           "captions": t.captions} for t in self.test_sets],
            "metrics": list(self.metrics),
            "sampling": dict(self.sampling),
            "overrides": dict(self.overrides),
            "baseline": self.baseline_row,
            "published": [dataclasses.asdict(p) for p in self.published],
            "published_source": self.published_source,
        }

    @classmethod
    def from_json(cls, doc: dict) -> "StudySpec":
        return cls(name=doc["name"],
                   rows=tuple(Row(r["name"], r["label"], r["config"], r.get("overrides", {})) for r in doc["rows"]),
                   seeds=tuple(doc["seeds"]),
                   test_sets=tuple(TestSet(t["name"], t["lr_dir"], t["hr_dir"], t.get("upscale", 4.0),
                                           t.get("captions")) for t in doc["test_sets"]),
                   metrics=tuple(doc["metrics"]), sampling=doc.get("sampling", {}),
                   overrides=doc.get("overrides", {}), baseline=doc.get("baseline", ""),
                   published=tuple(Published(**p) for p in doc.get("published", [])),
                   published_source=doc.get("published_source", ""))


def load_spec(path: str | Path) -> StudySpec:
    """``get_spec()`` of a spec file; SpecError when the file is missing or returns something else."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"study spec {str(path)!r}: no such file")
    module = _load_module(path)
    get_spec = getattr(module, "get_spec", None)
    if get_spec is None:
        raise SpecError(f"study spec {str(path)!r} defines no get_spec()")
    spec = get_spec()
    if not isinstance(spec, StudySpec):
        raise SpecError(f"study spec {str(path)!r}: get_spec() returned {type(spec).__name__}, not a StudySpec")
    return dataclasses.replace(spec, folder=path.resolve().parent)


def _load_module(path: Path):
    # a spec may import a sibling file of its folder, as a config file may
    sys.path.insert(0, str(path.resolve().parent))
    try:
        module_spec = importlib.util.spec_from_file_location(f"xpsr_study_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module

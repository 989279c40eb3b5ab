"""Evaluate one dataset: pair the folders, compute the requested metrics per image, average them.

The result is a plain JSON-ready dict (see :func:`evaluate_dataset`), so that reports can be written, merged
across runs and re-rendered without recomputing anything. The numbers always travel with the settings that
produced them.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as pixel
from . import optional, perceptual
from .pairing import load_pair, pair_folders

# name -> (label, lower_is_better) for every metric the evaluator knows, in report column order.
METRICS: dict[str, tuple[str, bool]] = {
    "psnr": ("PSNR", False),
    "ssim": ("SSIM", False),
    "lpips": ("LPIPS", True),
    "dists": ("DISTS", True),
    "fid": ("FID", True),
    "niqe": ("NIQE", True),
    "clipiqa": ("CLIPIQA", False),
    "musiq": ("MUSIQ", False),
    "maniqa": ("MANIQA", False),
    "liqe": ("LIQE", False),
}
# Shorthands for --metrics.
METRIC_GROUPS = {
    "default": ("psnr", "ssim", "lpips"),
    "paper": ("psnr", "ssim", "lpips", "dists", "fid", "maniqa", "musiq", "clipiqa"),
    "all": tuple(METRICS),
}
FORMAT = "xpsr_jax.eval/1"


def parse_metrics(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"psnr,ssim,lpips"`` or a group name (default, paper, all) -> metric names, in report order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name in METRIC_GROUPS:
            chosen.update(METRIC_GROUPS[name])
        elif name in METRICS:
            chosen.add(name)
        else:
            raise ValueError(f"unknown metric {raw!r}; choose from {', '.join(METRICS)} "
                             f"or a group: {', '.join(METRIC_GROUPS)}")
    if not chosen:
        raise ValueError("no metric requested")
    return tuple(m for m in METRICS if m in chosen)


@dataclass
class EvalConfig:
    """How numbers are computed. Every field can change a number, so all of them are recorded in reports."""

    metrics: tuple[str, ...] = METRIC_GROUPS["default"]
    colour_space: str = "y"  # "y" (BT.601 luma, the SR convention) or "rgb"; PSNR and SSIM only
    crop_border: int = 0  # pixels shaved from each side before PSNR and SSIM
    ssim_convention: str = "pyiqa"  # "pyiqa" (rounded levels, clamped cs) or "basicsr"
    psnr_eps: float = 0.0  # pyiqa 0.1.10 adds 1e-8 to the MSE
    lpips_net: str = "alex"
    device: str = "cpu"  # for the optional pyiqa metrics

    def __post_init__(self):
        self.metrics = parse_metrics(self.metrics)
        if self.colour_space not in pixel.COLOUR_SPACES:
            raise ValueError(f"colour space must be one of {pixel.COLOUR_SPACES}, got {self.colour_space!r}")
        if self.ssim_convention not in pixel.SSIM_CONVENTIONS:
            raise ValueError(f"SSIM convention must be one of {pixel.SSIM_CONVENTIONS}")
        if self.crop_border < 0:
            raise ValueError("crop border must be >= 0")


@dataclass
class RunInfo:
    """What produced the predictions; recorded beside the numbers, never used to compute them."""

    model_variant: str | None = None
    colour_fix: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict:
    """Versions of what computes the numbers."""
    return {
        "xpsr_jax": _version("xpsr-jax"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": _version("scipy"),
        "pillow": _version("pillow"),
        "image_loading": "PIL, converted to 8-bit RGB",
    }


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None]
    if not finite:
        return None
    # An identical pair has PSNR inf; the mean then is inf too, which is the honest answer.
    return float(np.mean(finite)) if all(math.isfinite(v) for v in finite) else float("inf")


class _Metrics:
    """The per-image metric functions of a config; unavailable metrics are recorded, not fatal."""

    def __init__(self, config: EvalConfig):
        self.config = config
        self.unavailable: dict[str, str] = {}
        self.details: dict[str, dict] = {}
        self.lpips = None
        self.external: dict[str, optional.ExternalMetric] = {}
        pixel_details = pixel.describe(config.colour_space, config.crop_border, config.psnr_eps,
                                       config.ssim_convention)
        for name in config.metrics:
            if name in ("psnr", "ssim"):
                self.details[name] = pixel_details[name]
            elif name == "lpips":
                try:
                    self.lpips = perceptual.load_lpips(config.lpips_net)
                    self.details[name] = perceptual.describe(config.lpips_net)
                except perceptual.LPIPSUnavailable as exc:
                    self.unavailable[name] = str(exc)
            else:
                try:
                    self.external[name] = optional.load_external(name, config.device)
                    self.details[name] = self.external[name].describe()
                except optional.MetricUnavailable as exc:
                    self.unavailable[name] = str(exc)

    @property
    def available(self) -> list[str]:
        return [m for m in self.config.metrics if m not in self.unavailable]

    def image(self, name: str, pred: np.ndarray, gt: np.ndarray, pred_path: Path, gt_path: Path) -> float:
        c = self.config
        if name == "psnr":
            return pixel.psnr(pred, gt, colour_space=c.colour_space, crop_border=c.crop_border, eps=c.psnr_eps)
        if name == "ssim":
            return pixel.ssim(pred, gt, colour_space=c.colour_space, crop_border=c.crop_border,
                              convention=c.ssim_convention)
        if name == "lpips":
            return self.lpips(pred, gt)
        return self.external[name].image(pred_path, gt_path)


def default_name(gt_dir: str | Path) -> str:
    """A dataset name from its ground-truth folder: ``RealSR/HR`` -> ``RealSR``, ``DIV2K_valid`` -> itself."""
    gt = Path(gt_dir).resolve()
    if gt.name.lower() in {"hr", "gt", "ground_truth", "groundtruth", "target"} and gt.parent.name:
        return gt.parent.name
    return gt.name


def evaluate_dataset(pred_dir: str | Path, gt_dir: str | Path, *, lr_dir: str | Path | None = None,
                     name: str | None = None, config: EvalConfig | None = None, run: RunInfo | None = None,
                     progress: bool = True) -> dict:
    """Metrics of one prediction folder against its ground truth, as a JSON-ready dict.

    Keys: ``name``, folders, ``settings`` (config, per-metric implementation details, run info, versions),
    ``summary`` (metric -> mean over the evaluated images, or the folder-level value for FID),
    ``images`` (one dict per evaluated pair: stem, paths, metric values), ``mismatches`` (stem, kind,
    detail), ``unavailable`` (metric -> reason), ``n_pairs``, ``n_evaluated``.
    """
    config = config or EvalConfig()
    run = run or RunInfo()
    pairs, mismatches = pair_folders(pred_dir, gt_dir, lr_dir)
    scorer = _Metrics(config)
    per_image_metrics = [m for m in scorer.available if m != "fid"]

    images = []
    iterator = pairs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(pairs, desc=f"eval {name or default_name(gt_dir)}", unit="img", file=sys.stderr)
    for pair in iterator:
        pred, gt, problem = load_pair(pair)
        if problem is not None:
            mismatches.append(problem)
            continue
        row: dict[str, Any] = {"stem": pair.stem, "pred": str(pair.pred.resolve()), "gt": str(pair.gt.resolve()),
                               "lr": str(pair.lr.resolve()) if pair.lr else None,
                               "width": int(gt.shape[1]), "height": int(gt.shape[0])}
        for metric in list(per_image_metrics):
            try:
                row[metric] = scorer.image(metric, pred, gt, pair.pred, pair.gt)
            except optional.MetricUnavailable as exc:
                # A pyiqa metric that wants a download only when first run: drop it everywhere, say why.
                scorer.unavailable[metric] = str(exc)
                scorer.details.pop(metric, None)
                per_image_metrics.remove(metric)
                for earlier in images:
                    earlier.pop(metric, None)
            except Exception as exc:
                raise RuntimeError(f"{metric} failed on {pair.pred} vs {pair.gt}: {exc}") from exc
        images.append(row)

    summary = {m: _mean([row[m] for row in images]) for m in per_image_metrics}
    if "fid" in scorer.external:
        try:
            summary["fid"] = scorer.external["fid"].folders(str(pred_dir), str(gt_dir))
        except optional.MetricUnavailable as exc:
            scorer.unavailable["fid"] = str(exc)
            scorer.details.pop("fid", None)

    return {
        "name": name or default_name(gt_dir),
        "pred_dir": str(Path(pred_dir).resolve()),
        "gt_dir": str(Path(gt_dir).resolve()),
        "lr_dir": str(Path(lr_dir).resolve()) if lr_dir is not None else None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "colour_space": config.colour_space,
            "crop_border": config.crop_border,
            "ssim_convention": config.ssim_convention,
            "psnr_eps": config.psnr_eps,
            "lpips_net": config.lpips_net,
            "device": config.device,
            "model_variant": run.model_variant,
            "colour_fix": run.colour_fix,
            "extra": dict(run.extra),
            "metrics": scorer.details,
            "environment": environment(),
        },
        "metrics": list(config.metrics),
        "summary": summary,
        "images": images,
        "mismatches": [m.to_dict() for m in sorted(mismatches, key=lambda m: (m.stem, m.kind))],
        "unavailable": scorer.unavailable,
        "n_pairs": len(pairs),
        "n_evaluated": len(images),
    }

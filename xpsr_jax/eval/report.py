"""Evaluation reports: Markdown, CSV and JSON per dataset with per-image values, plus an HTML page.

Input is a list of dataset results as produced by :func:`xpsr_jax.eval.evaluate.evaluate_dataset`. The JSON
file is the complete record (it can be read back with :func:`load_results` and merged with a later run);
the other files are views of it. Each dataset's settings (colour space, crop, metric implementations and
versions, model variant, colour fix, caller-supplied settings) are written next to its numbers, and every
image that was not evaluated is listed with the reason.

Files written into the output folder:

* ``results.json`` - everything;
* ``results.md`` - summary table, then per dataset: settings, mismatches, unavailable metrics, per-image table;
* ``results.csv`` - one row per dataset: counts, metric means, flattened settings;
* ``per_image.csv`` - one row per evaluated image of every dataset;
* ``index.html`` - see :mod:`xpsr_jax.eval.html_page`.

The table cells both formats share come from :mod:`xpsr_jax.eval.tables`.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from .evaluate import FORMAT, METRICS
from .html_page import write_html
from .tables import flat_settings, format_value, metric_columns, per_image_rows, summary_rows

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
PER_IMAGE_CSV = "per_image.csv"


# ---------------------------------------------------------------------------------------------- JSON


def _encode(obj: Any) -> Any:
    """JSON has no infinity: non-finite floats become the strings "inf", "-inf", "nan"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    return obj


def _decode_number(value: Any) -> Any:
    return float(value) if value in ("inf", "-inf", "nan") else value


def _decode_dataset(d: dict) -> dict:
    d = dict(d)
    d["summary"] = {k: _decode_number(v) for k, v in d.get("summary", {}).items()}
    d["images"] = [{k: (_decode_number(v) if k in METRICS else v) for k, v in row.items()}
                   for row in d.get("images", [])]
    return d


def write_json(datasets: list[dict], path: str | Path) -> Path:
    from xpsr_jax.files import atomic_write_json

    doc = {"format": FORMAT, "datasets": _encode(datasets)}
    return atomic_write_json(path, doc)  # strict JSON (non-finite values are encoded above), atomic


def load_results(path: str | Path) -> list[dict]:
    """Dataset results from a ``results.json`` written by :func:`write_json`."""
    from xpsr_jax.paths import as_path

    doc = json.loads(as_path(path).read_text(encoding="utf-8"))  # local, or a report in a bucket (--append)
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not an evaluation report of format {FORMAT} (found {doc.get('format')!r})")
    return [_decode_dataset(d) for d in doc["datasets"]]


def merge_results(previous: list[dict], new: list[dict]) -> list[dict]:
    """``previous`` with datasets of the same name replaced by ``new`` ones; new names are appended."""
    replaced = {d["name"] for d in new}
    return [d for d in previous if d["name"] not in replaced] + list(new)


# ---------------------------------------------------------------------------------------------- Markdown


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]], align_right_from: int = 1) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---:" if i >= align_right_from else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def to_markdown(datasets: list[dict]) -> str:
    header, rows = summary_rows(datasets)
    lines = ["# Super-resolution evaluation", ""]
    lines += _md_table(header, rows)
    lines += ["", "Means over the evaluated images (FID: between the two folders). "
                  "Every setting that affects a number is listed under its dataset.", ""]
    for d in datasets:
        lines += [f"## {d['name']}", ""]
        lines.append(f"- predictions: `{d['pred_dir']}`")
        lines.append(f"- ground truth: `{d['gt_dir']}`")
        if d.get("lr_dir"):
            lines.append(f"- LR inputs: `{d['lr_dir']}`")
        lines.append(f"- evaluated {d['n_evaluated']} of {d['n_pairs']} pairs by stem; "
                     f"{len(d['mismatches'])} problem(s) listed below; computed {d.get('created', '')}")
        lines += ["", "### Settings", ""]
        lines += _md_table(["setting", "value"], flat_settings(d["settings"]), align_right_from=99)
        if d["mismatches"]:
            lines += ["", "### Not evaluated or incomplete", ""]
            lines += _md_table(["stem", "problem", "detail"],
                               [[m["stem"], m["kind"], m["detail"]] for m in d["mismatches"]], align_right_from=99)
        if d.get("unavailable"):
            lines += ["", "### Unavailable metrics", ""]
            lines += [f"- **{name}**: {reason}" for name, reason in d["unavailable"].items()]
        if d["images"]:
            lines += ["", "### Per image", ""]
            lines += _md_table(*per_image_rows(d))
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CSV


def _csv_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return format_value(value)
    return "" if value is None else value


def write_summary_csv(datasets: list[dict], path: str | Path) -> Path:
    columns = metric_columns(datasets)
    setting_keys: list[str] = []
    for d in datasets:
        for key, _ in flat_settings(d["settings"]):
            if key not in setting_keys:
                setting_keys.append(key)
    from xpsr_jax.files import atomic_open

    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dataset", "n_pairs", "n_evaluated", "n_problems"] + columns
                        + ["pred_dir", "gt_dir", "lr_dir"] + setting_keys)
        for d in datasets:
            settings = dict(flat_settings(d["settings"]))
            writer.writerow([d["name"], d["n_pairs"], d["n_evaluated"], len(d["mismatches"])]
                            + [_csv_number(d["summary"].get(m)) for m in columns]
                            + [d["pred_dir"], d["gt_dir"], d.get("lr_dir") or ""]
                            + [settings.get(k, "") for k in setting_keys])
    return Path(path)


def write_per_image_csv(datasets: list[dict], path: str | Path) -> Path:
    columns = [m for m in metric_columns(datasets) if m != "fid"]
    from xpsr_jax.files import atomic_open

    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dataset", "stem", "width", "height"] + columns + ["pred", "gt", "lr"])
        for d in datasets:
            for row in d["images"]:
                writer.writerow([d["name"], row["stem"], row["width"], row["height"]]
                                + [_csv_number(row.get(m)) for m in columns]
                                + [row["pred"], row["gt"], row.get("lr") or ""])
    return Path(path)


# ---------------------------------------------------------------------------------------------- all


def write_reports(datasets: list[dict], out_dir: str | Path, *, html: bool = True, embed_images: bool = False,
                  max_images: int = 24, crop_size: int = 160) -> dict[str, Path]:
    """Write every report file into ``out_dir`` (created if needed); returns kind -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_json(datasets, out / RESULTS_JSON),
        "markdown": out / RESULTS_MD,
        "csv": write_summary_csv(datasets, out / RESULTS_CSV),
        "per_image_csv": write_per_image_csv(datasets, out / PER_IMAGE_CSV),
    }
    from xpsr_jax.files import atomic_write_text

    atomic_write_text(paths["markdown"], to_markdown(datasets))
    if html:
        paths["html"] = write_html(datasets, out, embed_images=embed_images, max_images=max_images,
                                   crop_size=crop_size)
    return paths

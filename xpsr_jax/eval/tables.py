"""The cells of the evaluation tables, shared by the Markdown report and the HTML page.

A dataset result (see :func:`xpsr_jax.eval.evaluate.evaluate_dataset`) -> header and rows of strings; values are
formatted here, at the last step, so the results themselves stay numbers.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from .evaluate import METRICS


def format_value(value: Any, digits: int = 4) -> str:
    """A metric value for tables: fixed decimals, ``inf`` for infinity, ``n/a`` for missing."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def metric_header(name: str, arrows: bool = True) -> str:
    label, lower_better = METRICS.get(name, (name.upper(), False))
    return f"{label} {'↓' if lower_better else '↑'}" if arrows else label


def metric_columns(datasets: Iterable[dict]) -> list[str]:
    """Metrics requested in any dataset, in the fixed report order."""
    wanted = {m for d in datasets for m in d.get("metrics", [])}
    return [m for m in METRICS if m in wanted]


def flat_settings(settings: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as ``("metrics.lpips.net", "alex")`` pairs, in a stable order."""
    rows: list[tuple[str, str]] = []
    for key, value in settings.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(flat_settings(value, path + "."))
        elif isinstance(value, dict):
            rows.append((path, "{}"))
        elif isinstance(value, (list, tuple)):
            rows.append((path, ", ".join(str(v) for v in value)))
        else:
            rows.append((path, "" if value is None else str(value)))
    return rows


def summary_rows(datasets: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the dataset summary table (shared by Markdown and HTML)."""
    columns = metric_columns(datasets)
    header = ["dataset", "images", "problems"] + [metric_header(m) for m in columns]
    rows = []
    for d in datasets:
        values = [format_value(d["summary"].get(m)) if m in d.get("metrics", []) else "" for m in columns]
        rows.append([d["name"], str(d["n_evaluated"]), str(len(d["mismatches"]))] + values)
    return header, rows


def per_image_rows(dataset: dict) -> tuple[list[str], list[list[str]]]:
    columns = [m for m in metric_columns([dataset]) if m != "fid" and m not in dataset.get("unavailable", {})]
    header = ["image", "size"] + [metric_header(m) for m in columns]
    rows = [[row["stem"], f"{row['width']}x{row['height']}"] + [format_value(row.get(m)) for m in columns]
            for row in dataset["images"]]
    return header, rows

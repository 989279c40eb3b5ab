"""``xpsr-jax study report W``: ``W/report/study.md`` and ``W/report/index.html`` from the study folder alone.

The page: per test set a table of rows x metrics (mean ± std over seeds, the published number beside it), each
row's change against the baseline row (measured and published), every missing value with its reason, the
training curves (:mod:`.plots`) and the state of every run. The document is built once as a list of blocks and
written in both formats, so the two never disagree.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from xpsr_jax.eval.tables import format_value, metric_header
from xpsr_jax.files import atomic_write_text
from xpsr_jax.study.plots import write_curves
from xpsr_jax.study.results import StudyResults, collect, training_curves
from xpsr_jax.study.spec import RunKey

MISSING = "missing"


def _value(v: float | None) -> str:
    return MISSING if v is None else format_value(v)


def _signed(v: float | None) -> str:
    return "n/a" if v is None else ("+" if v >= 0 else "") + format_value(v)


def cell_text(cell, n_seeds: int) -> str:
    """``0.6502 ± 0.0040 (paper 0.6450)``; ``n=1/2`` when some seeds have no value; ``missing`` when none has."""
    if cell.mean is None:
        text = MISSING
    else:
        text = format_value(cell.mean) + (f" ± {format_value(cell.std)}" if cell.std is not None else "")
        if len(cell.values) < n_seeds:
            text += f" (n={len(cell.values)}/{n_seeds})"
    if cell.published is not None:
        text += f" (paper {format_value(cell.published)})"
    return text


def build_document(res: StudyResults, curve_files: dict[str, Path], out_dir: Path) -> list[tuple]:
    spec = res.spec
    n = len(spec.seeds)
    metrics = list(spec.metrics)
    doc: list[tuple] = [("h1", f"Study: {spec.name}")]
    doc.append(("p", f"{len(spec.rows)} rows x {n} seeds ({', '.join(map(str, spec.seeds))}) on "
                     f"{', '.join(t.name for t in spec.test_sets)}. Measured values: mean ± sample standard "
                     f"deviation over seeds. Published numbers: {spec.published_source or 'none given'}."))
    for t in spec.test_sets:
        doc.append(("h2", f"Results on {t.name}"))
        rows = [[r.label, str(sum(f"eval/{t.name}" in res.stages.get(RunKey(r, s).run_id, {}) for s in spec.seeds))]
                + [cell_text(res.cell(r.name, t.name, m), n) for m in metrics] for r in spec.rows]
        doc.append(("table", ["row", "seeds"] + [metric_header(m) for m in metrics], rows))
    base = next(r for r in spec.rows if r.name == spec.baseline_row)
    doc.append(("h2", f"Change against {base.label}"))
    doc.append(("p", "Measured: difference of the means over seeds; paper: difference of the published numbers."))
    for t in spec.test_sets:
        rows = []
        for r in spec.rows:
            if r.name == base.name:
                continue
            cells = []
            for m in metrics:
                measured, published = res.change(r.name, t.name, m)
                cells.append(_signed(measured) + (f" (paper {_signed(published)})" if published is not None else ""))
            rows.append([r.label] + cells)
        doc.append(("h3", t.name))
        doc.append(("table", ["row"] + [metric_header(m) for m in metrics], rows))
    doc += _missing(res)
    doc.append(("h2", "Training curves"))
    if curve_files:
        for metric, path in curve_files.items():
            doc.append(("img", os.path.relpath(path, out_dir), f"{metric} against step"))
    else:
        doc.append(("p", "No run has logged a training step yet (no metrics.jsonl)."))
    doc.append(("h2", "Runs"))
    run_rows = []
    for key in spec.run_list():
        stages = res.stages.get(key.run_id, {})
        train = stages.get("train", {})
        run_rows.append([key.run_id, key.row.config, f"{len(stages)} of {2 + 2 * len(spec.test_sets)}",
                         str(train.get("step", "")), _value(train.get("last_loss"))
                         if "train" in stages else MISSING])
    doc.append(("table", ["run", "config", "stages done", "trained steps", "last loss"], run_rows))
    return doc


def _missing(res: StudyResults) -> list[tuple]:
    """Every missing value, grouped by reason; a metric missing for every run is named as a column not computed."""
    spec = res.spec
    groups: dict[tuple[str, str, str], list[str]] = {}
    for (row, test_set, metric), cell in res.cells.items():
        for run_id, reason in cell.missing.items():
            groups.setdefault((metric, test_set, reason), []).append(run_id)
    if not groups:
        return [("h2", "Missing values"), ("p", "None: every run has every metric on every test set.")]
    never = [m for m in spec.metrics if all(res.cells[(r.name, t.name, m)].mean is None
                                            for r in spec.rows for t in spec.test_sets)]
    out = [("h2", "Missing values")]
    if never:
        out.append(("p", "Columns that could not be computed for any run: "
                         + ", ".join(metric_header(m, arrows=False) for m in never) + "."))
    # the same reason for the same runs over several metrics (a run not finished) reads as one line
    by_runs: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
    for (m, t, reason), runs in groups.items():
        by_runs.setdefault((t, reason, tuple(sorted(runs))), []).append(m)
    items = [f"{', '.join(metric_header(m, arrows=False) for m in spec.metrics if m in metrics)} on {t} "
             f"({', '.join(runs)}): {reason}" for (t, reason, runs), metrics in sorted(by_runs.items())]
    out.append(("ul", items))
    return out


# ---------------------------------------------------------------------------------------------- rendering


def to_markdown(doc: list[tuple]) -> str:
    lines = []
    for kind, *body in doc:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + body[0], ""]
        elif kind == "p":
            lines += [body[0], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in body[0]] + [""]
        elif kind == "img":
            lines += [f"![{body[1]}]({body[0]})", ""]
        elif kind == "table":
            header, rows = body
            esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
            lines.append("| " + " | ".join(esc(h) for h in header) + " |")
            lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
            lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
            lines.append("")
    return "\n".join(lines)


_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
          "td{text-align:right}td:first-child{text-align:left}.missing{color:#b00}img{max-width:100%}")


def to_html(doc: list[tuple], title: str) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_STYLE}</style></head><body>"]
    for kind, *body in doc:
        if kind in ("h1", "h2", "h3", "p"):
            parts.append(f"<{kind}>{e(body[0])}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in body[0]) + "</ul>")
        elif kind == "img":
            parts.append(f"<figure><img src='{e(body[0])}' alt='{e(body[1])}'><figcaption>{e(body[1])}"
                         "</figcaption></figure>")
        elif kind == "table":
            header, rows = body
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            for row in rows:
                cells = "".join(f"<td class='missing'>{e(c)}</td>" if str(c).startswith(MISSING)
                                else f"<td>{e(c)}</td>" for c in row)
                parts.append(f"<tr>{cells}</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(workdir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Collect the study in ``workdir`` and write ``study.md``, ``index.html`` and ``curves/*.png`` into
    ``out_dir`` (default ``workdir/report``); kind -> path."""
    out = Path(out_dir) if out_dir is not None else Path(workdir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    res = collect(workdir)
    curve_files = write_curves(training_curves(workdir, res.spec), res.spec, out / "curves")
    doc = build_document(res, curve_files, out)
    paths = {"markdown": atomic_write_text(out / "study.md", to_markdown(doc)),
             "html": atomic_write_text(out / "index.html", to_html(doc, f"Study: {res.spec.name}"))}
    paths.update({f"curve:{m}": p for m, p in curve_files.items()})
    return paths

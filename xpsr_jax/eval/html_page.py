"""A self-contained HTML page of an evaluation: metric tables and side-by-side crops (LR, SR, HR).

The crops are the centre of each ground-truth image (``crop_size`` pixels a side, the same region of the
prediction, and the matching region of the LR input scaled by the size ratio), shown at one display size with
nearest-neighbour scaling so that pixels stay visible. They are saved as PNG files under ``crops/`` next to
the page (relative links), or embedded in it as base64 with ``embed_images=True`` so the page is one file.
No script, font or style sheet is loaded from anywhere else.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

from PIL import Image

from .tables import flat_settings, format_value, metric_columns, metric_header, per_image_rows, summary_rows

PAGE = "index.html"
CROPS = "crops"
DISPLAY = 240  # CSS pixels per crop

_CSS = """
:root { --ink:#1f2328; --muted:#59636e; --line:#d1d9e0; --soft:#f6f8fa; --accent:#0969da; --warn:#9a6700;
        --warnbg:#fff8c5; }
* { box-sizing:border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--ink); background:#fff; }
header { padding:20px 32px; background:linear-gradient(90deg,#0b3d91,#1565c0); color:#fff; }
header h1 { margin:0; font-size:22px; font-weight:600; }
header p { margin:4px 0 0; opacity:.85; font-size:13px; }
main { padding:8px 32px 40px; max-width:1400px; }
h2 { margin:28px 0 8px; font-size:19px; border-bottom:1px solid var(--line); padding-bottom:4px; }
h3 { margin:18px 0 6px; font-size:15px; color:var(--muted); }
table { border-collapse:collapse; margin:6px 0 12px; font-size:13.5px; }
th, td { border:1px solid var(--line); padding:4px 10px; text-align:right; }
th { background:var(--soft); font-weight:600; }
td:first-child, th:first-child { text-align:left; }
table.kv th { text-align:left; }
table.kv td { text-align:left; font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12.5px; }
tr:nth-child(even) td { background:#fbfcfd; }
.warn { background:var(--warnbg); border:1px solid #d4a72c; color:var(--warn); padding:6px 12px;
        border-radius:6px; margin:8px 0; }
.paths { color:var(--muted); font-size:13px; }
.paths code { font-size:12px; }
details { margin:6px 0; }
summary { cursor:pointer; color:var(--accent); }
.gallery { display:flex; flex-direction:column; gap:18px; margin-top:10px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 12px; background:var(--soft); }
.card .title { font-weight:600; margin-bottom:2px; }
.card .scores { color:var(--muted); font-size:13px; margin-bottom:8px; }
.row { display:flex; gap:12px; flex-wrap:wrap; }
figure { margin:0; text-align:center; }
figure img { width:%(d)dpx; height:%(d)dpx; object-fit:contain; image-rendering:pixelated;
             border:1px solid var(--line); background:#fff; display:block; }
figcaption { font-size:12px; color:var(--muted); margin-top:3px; }
.missing { width:%(d)dpx; height:%(d)dpx; display:flex; align-items:center; justify-content:center;
           border:1px dashed var(--line); color:var(--muted); font-size:12px; background:#fff; }
""" % {"d": DISPLAY}


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "dataset"


def _centre_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    w, h = min(size, width), min(size, height)
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _crops(row: dict, size: int) -> dict[str, Image.Image | None]:
    """Centre crops of HR and SR and the matching LR region; None for a file that cannot be read now."""
    out: dict[str, Image.Image | None] = {"lr": None, "sr": None, "hr": None}
    try:
        with Image.open(row["gt"]) as gt:
            box = _centre_box(gt.width, gt.height, size)
            out["hr"] = gt.convert("RGB").crop(box)
    except OSError:
        return out
    try:
        with Image.open(row["pred"]) as pred:
            out["sr"] = pred.convert("RGB").crop(box)
    except OSError:
        pass
    if row.get("lr"):
        try:
            with Image.open(row["lr"]) as lr:
                sx, sy = lr.width / row["width"], lr.height / row["height"]
                lr_box = (round(box[0] * sx), round(box[1] * sy), max(round(box[2] * sx), round(box[0] * sx) + 1),
                          max(round(box[3] * sy), round(box[1] * sy) + 1))
                out["lr"] = lr.convert("RGB").crop(lr_box)
        except OSError:
            pass
    return out


def _img_src(img: Image.Image, out_dir: Path, rel: str, embed: bool) -> str:
    from xpsr_jax.files import atomic_open

    if embed:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    path = out_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        img.save(f, format="PNG")
    return rel


def _figure(img: Image.Image | None, caption: str, out_dir: Path, rel: str, embed: bool) -> str:
    if img is None:
        return f'<figure><div class="missing">not available</div><figcaption>{_esc(caption)}</figcaption></figure>'
    src = _img_src(img, out_dir, rel, embed)
    size = f"{img.width}x{img.height}"
    return (f'<figure><img src="{_esc(src)}" alt="{_esc(caption)}" title="{_esc(size)}">'
            f"<figcaption>{_esc(caption)} ({size})</figcaption></figure>")


def _gallery(d: dict, out_dir: Path, embed: bool, max_images: int, crop_size: int) -> str:
    metrics = [m for m in metric_columns([d]) if m != "fid" and m not in d.get("unavailable", {})]
    cards = []
    folder = f"{CROPS}/{_slug(d['name'])}"
    for row in d["images"][:max_images]:
        crops = _crops(row, crop_size)
        scores = " · ".join(f"{metric_header(m, arrows=False)} {format_value(row.get(m))}" for m in metrics)
        figures = []
        if d.get("lr_dir"):
            figures.append(_figure(crops["lr"], "LR", out_dir, f"{folder}/{_slug(row['stem'])}_lr.png", embed))
        figures.append(_figure(crops["sr"], "SR (prediction)", out_dir, f"{folder}/{_slug(row['stem'])}_sr.png",
                               embed))
        figures.append(_figure(crops["hr"], "HR (ground truth)", out_dir, f"{folder}/{_slug(row['stem'])}_hr.png",
                               embed))
        cards.append(f'<div class="card"><div class="title">{_esc(row["stem"])}</div>'
                     f'<div class="scores">{_esc(scores)}</div><div class="row">{"".join(figures)}</div></div>')
    more = len(d["images"]) - max_images
    note = f"<p class='paths'>{more} more image(s) in the per-image table.</p>" if more > 0 else ""
    return f'<div class="gallery">{"".join(cards)}</div>{note}'


def _dataset_section(d: dict, out_dir: Path, embed: bool, max_images: int, crop_size: int) -> str:
    parts = [f"<h2 id='{_esc(_slug(d['name']))}'>{_esc(d['name'])}</h2>",
             "<div class='paths'>"
             f"predictions <code>{_esc(d['pred_dir'])}</code><br>ground truth <code>{_esc(d['gt_dir'])}</code>"
             + (f"<br>LR inputs <code>{_esc(d['lr_dir'])}</code>" if d.get("lr_dir") else "")
             + f"<br>evaluated {d['n_evaluated']} of {d['n_pairs']} pairs · {_esc(d.get('created', ''))}</div>"]
    if d["mismatches"]:
        parts.append(f"<div class='warn'>{len(d['mismatches'])} image(s) not evaluated or incomplete - "
                     "see the table below.</div>")
        parts.append(_table(["stem", "problem", "detail"],
                            [[m["stem"], m["kind"], m["detail"]] for m in d["mismatches"]], "kv"))
    for name, reason in d.get("unavailable", {}).items():
        parts.append(f"<div class='warn'><b>{_esc(name)}</b> unavailable: {_esc(reason)}</div>")
    parts.append("<details><summary>Settings behind these numbers</summary>"
                 + _table(["setting", "value"], [list(r) for r in flat_settings(d["settings"])], "kv")
                 + "</details>")
    if d["images"]:
        parts.append("<h3>Crops (centre of each image)</h3>")
        parts.append(_gallery(d, out_dir, embed, max_images, crop_size))
        parts.append("<details><summary>Per-image values</summary>" + _table(*per_image_rows(d)) + "</details>")
    return "\n".join(parts)


def render_html(datasets: list[dict], out_dir: str | Path, *, embed_images: bool = False, max_images: int = 24,
                crop_size: int = 160) -> str:
    """The page as a string; crop files (unless embedded) are written under ``out_dir/crops``."""
    out_dir = Path(out_dir)
    header, rows = summary_rows(datasets)
    created = max((d.get("created", "") for d in datasets), default="")
    body = [f"<header><h1>Super-resolution evaluation</h1><p>{len(datasets)} dataset(s) · {_esc(created)}</p>"
            "</header><main>",
            "<h2>Summary</h2>", _table(header, rows),
            "<p class='paths'>Means over the evaluated images (FID: between the two folders). ↑ higher is better, "
            "↓ lower is better.</p>"]
    body += [_dataset_section(d, out_dir, embed_images, max_images, crop_size) for d in datasets]
    body.append("</main>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>Super-resolution evaluation</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def write_html(datasets: list[dict], out_dir: str | Path, *, embed_images: bool = False, max_images: int = 24,
               crop_size: int = 160) -> Path:
    """Write ``index.html`` (and its crops) into ``out_dir``; returns the page's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / PAGE
    from xpsr_jax.files import atomic_write_text

    return atomic_write_text(page, render_html(datasets, out_dir, embed_images=embed_images,
                                               max_images=max_images, crop_size=crop_size))

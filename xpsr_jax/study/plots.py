"""Training curves of a study as PNG files: one figure per logged quantity (loss, its MSE and DFC parts, gradient
norm), every run a line, the colour per row and the line style per seed, so rows and seeds read apart.

Uses matplotlib's object API on the Agg canvas (no display, no global pyplot state)."""

from __future__ import annotations

from pathlib import Path

from xpsr_jax.files import atomic_open
from xpsr_jax.study.spec import StudySpec

# What metrics.jsonl logs that is worth a curve (throughput and the learning rate are not results).
PLOTTED = ("loss", "mse", "dfc_latent", "dfc_rgb", "grad_norm")
LINE_STYLES = ("-", "--", ":", "-.")


def write_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], spec: StudySpec,
                 out_dir: str | Path) -> dict[str, Path]:
    """``curves`` from :func:`xpsr_jax.study.results.training_curves` -> ``OUT/<metric>.png``; metric -> path."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [m for m in PLOTTED if any(m in c for c in curves.values())]
    colours = {r.name: f"C{i % 10}" for i, r in enumerate(spec.rows)}
    written = {}
    for metric in names:
        fig = Figure(figsize=(7, 4), dpi=100)
        ax = fig.add_subplot()
        for key in spec.run_list():
            points = curves.get(key.run_id, {}).get(metric)
            if not points:
                continue
            steps, values = zip(*points)
            style = LINE_STYLES[spec.seeds.index(key.seed) % len(LINE_STYLES)]
            ax.plot(steps, values, style, color=colours[key.row.name], marker="." if len(steps) < 20 else None,
                    label=f"{key.row.label} (seed {key.seed})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps, never 1.2
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(f"{spec.name}: {metric} against step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out / f"{metric}.png"
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png")
        written[metric] = path
    return written

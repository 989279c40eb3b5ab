"""The TPU fit table: the SD1.5 XPSR train step compiled for TPU slices from this host (no TPU needed; libtpu).

Each cell is one ahead-of-time compile (``xpsr_jax.train.plan``); its JSON line is appended to
``bench/results/tpu-plan.jsonl`` as soon as it is known, and ``bench/results/tpu-fit.md`` is rewritten from every
line there, naming the cells still missing. An SD1.5 compile takes 10-60 minutes on a 2-core host: run cells one
at a time, in the background, and rerun the script to add more (cells already measured are skipped).

    python bench/plan_tpu.py                       # every cell of the table not yet measured
    python bench/plan_tpu.py --cells v5e-8:fsdp8:xla:b1 v5p-8:data:xla:b8
    python bench/plan_tpu.py --cells v5e-8:fsdp8:xla:search
    python bench/plan_tpu.py --render              # only rewrite tpu-fit.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
JSONL = RESULTS / "tpu-plan.jsonl"
TABLE = RESULTS / "tpu-fit.md"

# the slices of the table and the mesh each is planned with (FSDP where a chip's HBM is small)
SLICES = {
    "v4-8": "data", "v5e-8": "fsdp8", "v5p-8": "data", "v6e-8": "fsdp8", "v5p-64": "fsdp8",
}
MESHES = {"data": (("data", -1), ("fsdp", 1)), "fsdp8": (("data", -1), ("fsdp", 8))}
ATTENTION = ("xla", "splash")


@dataclasses.dataclass(frozen=True)
class Cell:
    """``v5e-8:fsdp8:xla:b8`` (peak at 8 per chip) or ``v5e-8:fsdp8:splash:search`` (largest fitting batch)."""

    topology: str
    mesh: str
    attention: str
    batch: int | None  # None: search

    @classmethod
    def parse(cls, text: str) -> "Cell":
        topo, mesh, attention, what = text.split(":")
        return cls(topo, mesh, attention, None if what == "search" else int(what.lstrip("b")))

    def __str__(self) -> str:
        return f"{self.topology}:{self.mesh}:{self.attention}:{'search' if self.batch is None else f'b{self.batch}'}"


@dataclasses.dataclass(frozen=True)
class SamplingCell:
    """``sr:v5e-1:splash:b8:512``: the denoise loop (20 steps, CFG, bf16) for 8 images of 512 px per chip."""

    topology: str
    attention: str
    batch: int
    process: int

    @classmethod
    def parse(cls, text: str) -> "SamplingCell":
        _, topo, attention, batch, process = text.split(":")
        return cls(topo, attention, int(batch.lstrip("b")), int(process))

    def __str__(self) -> str:
        return f"sr:{self.topology}:{self.attention}:b{self.batch}:{self.process}"


SAMPLING = [SamplingCell("v5e-1", a, b, px) for a in ATTENTION for b, px in ((1, 512), (8, 512), (1, 2048))]


def parse_cell(text: str):
    return SamplingCell.parse(text) if text.startswith("sr:") else Cell.parse(text)


def all_cells() -> list:
    return [Cell(t, m, a, b) for t, m in SLICES.items() for a in ATTENTION for b in (8, None)] + SAMPLING


def sd15_config(cell: Cell):
    from xpsr_jax.train.cli import load_config

    config = load_config("xpsr_sd15", [])
    with config.unlocked():
        config.mesh.shape = MESHES[cell.mesh]
        config.model.attention_impl = cell.attention
    return config


def measure(cell, search_start: int = 8, search_limit: int = 1024) -> list[dict]:
    from xpsr_jax.train.plan import plan_train_step, search_batch
    from xpsr_jax.train.plan_cli import ProbeFailed

    tag = {"cell": str(cell), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if isinstance(cell, SamplingCell):
        from xpsr_jax.infer.plan import plan_denoise
        from xpsr_jax.infer.settings import SRSettings

        settings = SRSettings(dtype="bfloat16", attention_impl=cell.attention, batch_size=cell.batch)
        return [plan_denoise(cell.topology, cell.batch, cell.process, settings=settings).as_json() | tag]
    config = sd15_config(cell)
    if cell.batch is not None:
        report = plan_train_step(config, cell.topology, cell.batch, config_name="xpsr_sd15")
        return [report.as_json() | tag]
    probes = []

    def probe(batch):
        # each compile runs in a fresh child process: one process that compiles several SD1.5 programs keeps the
        # memory of the earlier ones (measured: a second probe ran the host's 24 GiB out where a first one did
        # not); the child leaves its answer in the plan cache, which this process then reads after a lowering
        child = subprocess.run([sys.executable, __file__, "--compile-probe", str(cell), str(batch)])
        if child.returncode:
            raise ProbeFailed(batch, child.returncode)
        report = plan_train_step(config, cell.topology, batch, config_name="xpsr_sd15", count_flops=False)
        probes.append(report)
        append(report.as_json() | tag | {"probe": True})
        return report

    summary = {"what": "plan_search_batch", "config": "xpsr_sd15", "topology": cell.topology,
               "search_start": search_start, "search_limit": search_limit} | tag
    try:
        best, _ = search_batch(probe, start=search_start, limit=search_limit)
    except ProbeFailed as e:  # what was learnt stays: the largest batch that fitted is a lower bound
        best = max((r.per_chip_batch for r in probes if r.fits), default=None)
        summary["stopped"] = {"batch": e.batch, "exit": e.returncode,
                              "why": "killed (signal 9: the host's OOM killer)" if e.returncode == -9 else "failed"}
    summary |= {"largest_per_chip_batch": best, "probes": [r.per_chip_batch for r in probes],
                "fits": [r.fits for r in probes]}
    return [summary]


def compile_probe(cell: Cell, batch: int) -> None:
    """One search probe's compile, in its own process; its figures go to the plan cache."""
    from xpsr_jax.train.plan import plan_train_step

    report = plan_train_step(sd15_config(cell), cell.topology, batch, config_name="xpsr_sd15", count_flops=False)
    print(f"{cell} at {batch} per chip: peak {report.as_json().get('peak_gib')} GiB, fits {report.fits}",
          file=sys.stderr)


def lower_only(cell: Cell) -> dict:
    """What the lowering alone tells (no compile: seconds, not tens of minutes): the kernel each attention call
    got, the program's size before optimisation, and the FLOPs of the XLA-attention lowering."""
    from xpsr_jax.train.plan import count_attention_kernels, kernel_totals, slice_config
    from xpsr_jax.train.trainer import global_step_flops, lower_step, plan_state

    config, mesh, dp = slice_config(sd15_config(cell), parse_topology(cell.topology), cell.batch or 8)
    plan = plan_state(config, mesh)
    t0 = time.perf_counter()
    with count_attention_kernels() as counts:
        lowered = lower_step(config, plan)
    seconds = time.perf_counter() - t0
    text = lowered.as_text()
    flops = global_step_flops(config, plan)
    return {"what": "plan_lowering", "config": "xpsr_sd15", "cell": f"lower:{cell}", "topology": cell.topology,
            "mesh": {k: int(v) for k, v in mesh.shape.items()}, "per_chip_batch": config.global_batch_size // dp,
            "global_batch": config.global_batch_size, "lower_seconds": round(seconds, 1),
            "attention": dict(sorted(counts.items())), "attention_kernels": kernel_totals(dict(counts)),
            "stablehlo_ops": sum(1 for line in text.splitlines() if " = " in line),
            "flops_per_step": flops, "flops_per_image": flops / config.global_batch_size if flops else None,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def parse_topology(name: str):
    from xpsr_jax.train.tpu_topology import parse

    return parse(name)


def append(line: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with JSONL.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)


def read_lines() -> list[dict]:
    if not JSONL.exists():
        return []
    return [json.loads(s) for s in JSONL.read_text().splitlines() if s.strip()]


def render(lines: list[dict], notes: dict[str, str]) -> str:
    from xpsr_jax.train.tpu_topology import parse

    notes = {"default": DEFAULT_NOTE, **notes}
    """The Markdown table: one row per slice and attention kernel; a cell nobody measured says why."""
    by_cell = {}
    for line in lines:
        if "cell" in line and not line.get("probe"):
            by_cell[line["cell"]] = line
    gib = lambda b: f"{b / (1 << 30):.1f}"  # noqa: E731
    rows = ["| slice | chips | mesh | attention | per-chip peak at batch 8 (GiB of HBM) | fits | largest per-chip "
            "batch | FLOPs/image (T) | compile (s wall / CPU) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    missing = []
    for topo, mesh in SLICES.items():
        for attention in ATTENTION:
            at8, search = Cell(topo, mesh, attention, 8), Cell(topo, mesh, attention, None)
            m8, ms = by_cell.get(str(at8)), by_cell.get(str(search))
            chips = parse(topo).chips
            if m8:
                peak = (m8.get("bytes_per_chip", {}).get("peak") or (m8.get("oom") or {}).get("required_bytes"))
                peak_s = f"{gib(peak)} of {m8['hbm_gib']}" if peak else "?"
                if "oom" in m8:
                    peak_s += " (compiler's OOM figure)"
                fits = "yes" if m8["fits"] else "no"
                flops = f"{m8['flops_per_image'] / 1e12:.2f}" if m8.get("flops_per_image") else ""
                secs = f"{m8['compile_seconds']:.0f} / {m8.get('compile_cpu_seconds', 0):.0f}"
            else:
                peak_s, fits, flops, secs = "not measured", "", "", ""
                missing.append(str(at8))
            if ms:
                best = str(ms["largest_per_chip_batch"]) if ms["largest_per_chip_batch"] else "none fits"
                if ms["largest_per_chip_batch"] and ms["largest_per_chip_batch"] >= ms.get("search_limit", 1024):
                    best = f"at least {best} (larger batches not compiled: the search's limit)"
                compiled = [f"{b} {'fits' if ok else 'no'}" for b, ok in zip(ms["probes"], ms.get("fits", ()))]
                if stopped := ms.get("stopped"):
                    best = f"at least {best}" if ms["largest_per_chip_batch"] else "not known"
                    compiled.append(f"{stopped['batch']} {stopped['why']}")
                best += " (compiled: " + ", ".join(compiled) + ")"
            else:
                best = "not measured"
                missing.append(str(search))
            fsdp = dict(MESHES[mesh])["fsdp"]
            layout = f"data {chips // fsdp}" + (f" x fsdp {fsdp}" if fsdp > 1 else "")
            rows.append(f"| {topo} | {chips} | {layout} | {attention} | {peak_s} | {fits} | {best} | "
                        f"{flops} | {secs} |")
    text = ["# SD1.5 XPSR train step on TPU slices (ahead-of-time compiles on a CPU host)", "",
            "Written by `bench/plan_tpu.py` from `tpu-plan.jsonl` (one JSON line per compile: per-chip bytes, "
            "attention kernels, collectives, FLOPs). Config `xpsr_sd15` (512 px, bf16, frozen weights in bf16, "
            "AdamW on the ControlNet and pixel attentions, VAE and text encoder in the step), random weights; "
            "per-chip bytes are the TPU compiler's memory analysis (arguments + temporaries + outputs - aliased) "
            "against the HBM the compiler reports usable. FLOPs come from the XLA-attention lowering (XLA does "
            "not count Pallas kernels).", "", "## Training: the train step", "", *rows, ""]
    rows = ["| slice | program | attention | images per call | per-chip peak (GiB of HBM) | fits | tiles | "
            "compile (s wall / CPU) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for cell in SAMPLING:
        m = by_cell.get(str(cell))
        what = f"denoise {cell.process}² (20 steps, CFG, bf16)"
        if not m:
            rows.append(f"| {cell.topology} | {what} | {cell.attention} | {cell.batch} | not measured | | | |")
            missing.append(str(cell))
            continue
        peak = m.get("bytes_per_chip", {}).get("peak") or (m.get("oom") or {}).get("required_bytes")
        tiles = f"{m['latent_tile']} latent px, {m['tile_batch']} per call" if m.get("latent_tile") else "whole"
        images = str(m["global_batch"])
        if m["global_batch"] < cell.batch:  # the tile planner splits what does not fit 80 % of the chip's HBM
            images += (f" (of {cell.batch} asked: the tile planner's estimate for {cell.batch} exceeds 80 % of the "
                       "chip's HBM; the program is the one of the row above"
                       + (", whose figures the plan cache answered)" if m.get("cached") else ")"))
        rows.append(f"| {cell.topology} | {what} | {cell.attention} | {images} | "
                    f"{gib(peak) if peak else '?'} of {m['hbm_gib']} | {'yes' if m['fits'] else 'no'} | {tiles} | "
                    f"{m['compile_seconds']:.0f} / {m.get('compile_cpu_seconds', 0):.0f} |")
    text += ["## Sampling: the denoise loop", "", *rows, ""]
    if missing:
        why: dict[str, list[str]] = {}
        for cell in missing:
            why.setdefault(notes.get(cell, notes["default"]), []).append(f"`{cell}`")
        text += ["Not measured yet, and why:", ""] + [f"- {', '.join(c)}: {reason}" for reason, c in why.items()]
        text.append("")
    known = {str(c) for c in all_cells()}
    others = [m for c, m in by_cell.items() if c not in known and m.get("what") == "plan_train_step"]
    if others:
        text += ["Other train-step cells measured:", "", "| cell | per-chip batch | per-chip peak (GiB) | fits | "
                 "attention kernels | compile (s wall / CPU) |", "| --- | --- | --- | --- | --- | --- |"]
        for m in others:
            peak = m.get("bytes_per_chip", {}).get("peak") or (m.get("oom") or {}).get("required_bytes")
            text.append(f"| `{m['cell']}` | {m['per_chip_batch']} | {gib(peak) if peak else '?'} of "
                        f"{m['hbm_gib']} | {'yes' if m['fits'] else 'no'} | {m['attention_kernels']} | "
                        f"{m['compile_seconds']:.0f} / {m.get('compile_cpu_seconds', 0):.0f} |")
        text.append("")
    lowerings = [m for m in lines if m.get("what") == "plan_lowering"]
    if lowerings:
        text += ["## Lowered only (no compile): attention kernels and FLOPs", "",
                 "The train step of the rows above, traced and lowered for the slice but not compiled "
                 "(`--lower-only`): which kernel each attention call got (VAE, ControlNet, UNet, text encoder), "
                 "the program's size before optimisation, and the FLOPs of the same step with XLA attention.", "",
                 "| cell | per-chip batch | attention kernels (calls) | long self-attentions | StableHLO ops | "
                 "FLOPs/image (T, XLA attention) | lower (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for m in lowerings:
            long = []
            for key, n in m["attention"].items():
                kernel, lengths, dim = key.split(":")
                q, kv = (int(x) for x in lengths.split("->"))
                if min(q, kv) >= 1024:
                    long.append(f"{kernel} {q}x{kv} {dim} x{n}")
            kernels = ", ".join(f"{k} {n}" for k, n in m["attention_kernels"].items())
            flops = f"{m['flops_per_image'] / 1e12:.2f}" if m.get("flops_per_image") else ""
            text.append(f"| `{m['cell']}` | {m['per_chip_batch']} | {kernels} | {'; '.join(long)} | "
                        f"{m['stablehlo_ops']} | {flops} | {m['lower_seconds']:.0f} |")
        text.append("")
    for key, paragraph in notes.items():  # measured facts kept beside the table (tpu-notes.json "section:...")
        if key.startswith("section:"):
            text += [f"## {key.split(':', 1)[1]}", "", paragraph, ""]
    extra = [line for line in lines if "cell" not in line and line.get("what", "").startswith("plan_")]
    if extra:
        text += ["Other compiles recorded in `tpu-plan.jsonl`: " + ", ".join(
            sorted({f"{x.get('what')} {x.get('topology')}" for x in extra})), ""]
    return "\n".join(text)


DEFAULT_NOTE = ("not run yet: one SD1.5 train-step compile took 1889 s on a 2-core host, and the host used so far "
                "was shared (load 9-18 on 2 cores); run `python bench/plan_tpu.py --cells CELL` on a larger host")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="*", help="cells to measure (default: every cell not yet in the JSONL)")
    p.add_argument("--render", action="store_true", help="only rewrite tpu-fit.md from tpu-plan.jsonl")
    p.add_argument("--lower-only", action="store_true",
                   help="for the train cells given: lower without compiling (attention kernels, FLOPs, program size)")
    p.add_argument("--search-start", type=int, default=8, help="a search's first per-chip batch (default 8)")
    p.add_argument("--search-limit", type=int, default=1024,
                   help="a search compiles no per-chip batch above this (e.g. below one whose compile does not "
                        "run on this host); the table then says the answer is a lower bound")
    p.add_argument("--compile-probe", nargs=2, metavar=("CELL", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--note", action="append", default=[], metavar="CELL=TEXT",
                   help="why a cell is missing (kept in tpu-notes.json)")
    args = p.parse_args()
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.compile_probe:
        return compile_probe(Cell.parse(args.compile_probe[0]), int(args.compile_probe[1]))
    notes_file = RESULTS / "tpu-notes.json"
    notes = json.loads(notes_file.read_text()) if notes_file.exists() else {}
    notes.setdefault("default", DEFAULT_NOTE)
    for item in args.note:
        key, _, text = item.partition("=")
        notes[key] = text
    if args.note:
        notes_file.write_text(json.dumps(notes, indent=1) + "\n")
    if not args.render:
        done = {line.get("cell") for line in read_lines() if not line.get("probe")}
        cells = [parse_cell(c) for c in args.cells] if args.cells else [c for c in all_cells() if str(c) not in done]
        for cell in cells:
            lines = [lower_only(cell)] if args.lower_only else measure(cell, args.search_start, args.search_limit)
            for line in lines:
                append(line)
            TABLE.write_text(render(read_lines(), notes))
    TABLE.write_text(render(read_lines(), notes))
    print(f"wrote {TABLE}")


if __name__ == "__main__":
    main()

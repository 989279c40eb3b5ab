"""Will this run fit that TPU slice? The real train step compiled ahead of time for a slice, from any host.

``plan_train_step(config, "v5p-64")`` builds the slice's compile-only devices (``tpu_topology``), the config's mesh
over them, the abstract sharded train state and the step exactly as the trainer does (``plan_state`` +
``lower_step`` under ``jax.set_mesh``), compiles it with the TPU compiler and reads back per-chip memory, the
attention kernel every attention call got and the collectives in the program. A compile that fails with
``RESOURCE_EXHAUSTED ... exceeds available HBM`` is a "does not fit" answer carrying the compiler's figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections import Counter
from typing import Any, Callable, Iterator

import ml_collections

from xpsr_jax.errors import UsageError
from xpsr_jax.train import hlo_stats, plan_cache
from xpsr_jax.train.tpu_topology import GIB, Topology, parse


@dataclasses.dataclass
class ChipMemory:
    """Bytes per chip from the compiler's memory analysis; peak = arguments + temporaries + outputs - aliased."""

    arguments: int
    temporaries: int
    outputs: int
    aliased: int
    generated_code: int = 0

    @property
    def peak(self) -> int:
        return self.arguments + self.temporaries + self.outputs - self.aliased

    @classmethod
    def from_compiled(cls, compiled) -> "ChipMemory":
        m = compiled.memory_analysis()
        return cls(int(m.argument_size_in_bytes), int(m.temp_size_in_bytes), int(m.output_size_in_bytes),
                   int(m.alias_size_in_bytes), int(m.generated_code_size_in_bytes))


@dataclasses.dataclass
class FitReport:
    """One compile of one program for one slice (a JSON line: :meth:`as_json`)."""

    program: str  # "train_step" | "denoise"
    config: str
    topology: Topology
    mesh: dict[str, int]
    per_chip_batch: int
    global_batch: int
    fits: bool
    memory: ChipMemory | None  # None when the compiler refused the program for its size
    compile_seconds: float
    lower_seconds: float
    compile_cpu_seconds: float
    attention: dict[str, int]  # kernel:q_len->kv_len:dHEAD_DIM -> calls
    collectives: dict[str, dict[str, int]]  # kind -> {"count", "bytes"}
    oom: dict | None = None  # {"message", "required_bytes", "available_bytes"} from a RESOURCE_EXHAUSTED compile
    remedies: list[str] = dataclasses.field(default_factory=list)
    flops_per_step: float | None = None  # global, from the XLA-attention lowering (kernels are invisible to XLA)
    xla_optimal_seconds: float | None = None  # the compiler's own estimate of one step on one chip
    extra: dict = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict:
        topo = self.topology
        out = {
            "what": f"plan_{self.program}", "config": self.config, "topology": topo.name,
            "topology_name": topo.topology_name, "chips": topo.chips, "mesh": self.mesh,
            "per_chip_batch": self.per_chip_batch, "global_batch": self.global_batch,
            "hbm_bytes": topo.hbm_bytes, "hbm_gib": round(topo.hbm_bytes / GIB, 2), "fits": self.fits,
            "compile_seconds": round(self.compile_seconds, 1), "lower_seconds": round(self.lower_seconds, 1),
            "compile_cpu_seconds": round(self.compile_cpu_seconds, 1),
            "attention": self.attention, "attention_kernels": kernel_totals(self.attention),
            "collectives": self.collectives,
        }
        if self.memory is not None:
            mem = dataclasses.asdict(self.memory)
            mem["peak"] = self.memory.peak
            out["bytes_per_chip"] = mem
            out["peak_gib"] = round(self.memory.peak / GIB, 2)
        if self.oom is not None:
            out["oom"] = self.oom
        if self.remedies:
            out["remedies"] = self.remedies
        if self.flops_per_step:
            out["flops_per_step"] = self.flops_per_step
            out["flops_per_image"] = per_image = self.flops_per_step / self.global_batch
            # the bound MFU is measured against: images/s of one chip at 100 % of its dense bf16 peak
            out["images_per_s_per_chip_at_peak"] = round(topo.generation.peak_tflops * 1e12 / per_image, 2)
        if self.xla_optimal_seconds:
            out["xla_optimal_seconds"] = self.xla_optimal_seconds
            if self.flops_per_step and not any(k.startswith("splash") for k in self.attention):
                out["xla_estimated_mfu"] = round(self.flops_per_step / topo.chips / self.xla_optimal_seconds
                                                 / (topo.generation.peak_tflops * 1e12), 3)
        out.update(self.extra)
        return out


def kernel_totals(attention: dict[str, int]) -> dict[str, int]:
    totals: Counter = Counter()
    for key, n in attention.items():
        totals[key.split(":", 1)[0]] += n
    return dict(totals)


# --- attention kernels: which one each call got ------------------------------------------------------------------
@contextlib.contextmanager
def count_attention_kernels() -> Iterator[Counter]:
    """Counts, while tracing, the kernel each attention call got (``nn.attention.recording``), keyed with its
    lengths and head dim: ``splash:4096->4096:d40``, ``xla:4096->77:d40``. Filled when the block exits."""
    from xpsr_jax.nn import attention

    counts: Counter = Counter()
    with attention.recording() as calls:
        yield counts
    counts.update(f"{c.impl}:{c.q_len}->{c.kv_len}:d{c.head_dim}" for c in calls)


# --- compiling for a slice ---------------------------------------------------------------------------------------
OOM_REQUIRED = re.compile(r"(?:required for [^()]*\(|Used )([\d.]+)([KMGT])")
OOM_AVAILABLE = re.compile(r"(?:available HBM \(|of )([\d.]+)([KMGT])(?:\)| hbm)", re.IGNORECASE)
_UNIT = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_oom(message: str) -> dict | None:
    """The compiler's figures from a ``RESOURCE_EXHAUSTED`` compile error; None for any other error."""
    if "resource_exhausted" not in message.lower() and "out of memory" not in message.lower():
        return None
    need, have = OOM_REQUIRED.search(message), OOM_AVAILABLE.search(message)
    first = next((line for line in message.splitlines() if "RESOURCE_EXHAUSTED" in line or "memory" in line),
                 message.splitlines()[0] if message else "")
    out = {"message": first.strip()[:400]}
    if need:
        out["required_bytes"] = int(float(need.group(1)) * _UNIT[need.group(2)])
    if have:
        out["available_bytes"] = int(float(have.group(1)) * _UNIT[have.group(2)])
    return out


@dataclasses.dataclass
class CompileResult:
    """What the compiler said about one program on one chip (or what it said last time: ``cached``)."""

    memory: ChipMemory | None  # None when it refused the program for its size (then ``oom``)
    oom: dict | None
    collectives: dict[str, dict[str, int]]
    hlo: dict[str, int]  # program size
    optimal_seconds: float | None
    attention: dict[str, int]
    lower_seconds: float
    compile_seconds: float
    compile_cpu_seconds: float  # the compiler's CPU time (all threads): comparable on a host shared with others
    cached: bool = False


def compile_for_slice(lower: Callable[[], Any], target: str) -> CompileResult:
    """Lower (counting attention kernels) and compile for ``target`` (the slice, for the plan cache); a
    too-large program comes back as ``oom``, not an error. A program planned before is not compiled again."""
    t0 = time.perf_counter()
    with count_attention_kernels() as counts:
        lowered = lower()
    attention, lower_seconds = dict(sorted(counts.items())), time.perf_counter() - t0
    key = plan_cache.program_key(lowered.as_text(), target)
    if (hit := plan_cache.load(key)) is not None:
        memory = ChipMemory(**hit.pop("memory")) if hit.get("memory") else None
        hit.pop("memory", None)
        return CompileResult(memory=memory, attention=attention, lower_seconds=lower_seconds, cached=True, **hit)
    t1, cpu1 = time.perf_counter(), time.process_time()
    memory = compiled = oom = None
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - JaxRuntimeError; only RESOURCE_EXHAUSTED is an answer, the rest re-raises
        oom = parse_oom(str(e))
        if oom is None:
            raise
    figures: dict[str, Any] = {"oom": oom, "collectives": {}, "hlo": {}, "optimal_seconds": None}
    if compiled is not None:
        memory = ChipMemory.from_compiled(compiled)
        text = compiled.as_text()
        figures.update(collectives=hlo_stats.collectives(text), hlo=hlo_stats.instruction_counts(text),
                       optimal_seconds=hlo_stats.optimal_seconds(compiled))
    figures.update(compile_seconds=time.perf_counter() - t1, compile_cpu_seconds=time.process_time() - cpu1)
    plan_cache.store(key, {**figures, "memory": dataclasses.asdict(memory) if memory else None})
    return CompileResult(memory=memory, attention=attention, lower_seconds=lower_seconds, **figures)


class SliceMismatchError(UsageError, ValueError):
    """The config's mesh or batch cannot be laid on the slice (e.g. fsdp 8 on 4 chips)."""


def slice_config(config: ml_collections.ConfigDict, topology: Topology,
                 per_chip_batch: int | None) -> tuple[ml_collections.ConfigDict, Any, int]:
    """-> (config with the global batch for ``per_chip_batch``, the mesh over the slice, data-parallel width)."""
    from xpsr_jax.train import partition

    try:
        mesh = partition.make_mesh(tuple(tuple(a) for a in config.mesh.shape), topology.devices())
    except ValueError as e:
        raise SliceMismatchError(f"{topology.name} ({topology.chips} chips): {e}") from None
    rules = tuple(tuple(r) for r in config.mesh.logical_axis_rules)
    dp = partition.data_parallel_size(mesh, rules)
    config = ml_collections.ConfigDict(config.to_dict())
    if per_chip_batch is not None:
        config.global_batch_size = per_chip_batch * dp
    accum = config.optim.grad_accum_steps
    if config.global_batch_size % (dp * accum):
        raise SliceMismatchError(f"global batch {config.global_batch_size} does not split into {dp} data-parallel "
                                 f"shards x {accum} accumulation steps on {topology.name}")
    return config, mesh, dp


def plan_train_step(config: ml_collections.ConfigDict, topology: str | Topology, per_chip_batch: int | None = None,
                    *, config_name: str = "", count_flops: bool = True) -> FitReport:
    """Compile the config's train step for ``topology`` (per-chip batch from the config unless given)."""
    from xpsr_jax.train.trainer import global_step_flops, lower_step, plan_state

    topology = parse(topology) if isinstance(topology, str) else topology
    config, mesh, dp = slice_config(config, topology, per_chip_batch)
    plan = plan_state(config, mesh)
    result = compile_for_slice(lambda: lower_step(config, plan), repr(topology.describe_kwargs()))
    report = fit_report("train_step", config_name, topology, mesh, config.global_batch_size // dp,
                        config.global_batch_size, result)
    report.remedies = train_remedies(config, report, mesh) if not report.fits else []
    if count_flops:
        report.flops_per_step = global_step_flops(config, plan)
    return report


def fit_report(program: str, config_name: str, topology: Topology, mesh, per_chip_batch: int,
               global_batch: int, result: CompileResult) -> FitReport:
    """A compile's figures as a report: fits when the per-chip peak is within the chip's usable HBM."""
    memory = result.memory
    fits = memory is not None and memory.peak <= topology.hbm_bytes
    extra: dict[str, Any] = {"hlo": result.hlo} if result.hlo else {}
    if result.cached:
        extra["cached"] = True  # the figures (and compile seconds) of an earlier compile of the same program
    return FitReport(program, config_name, topology, {k: int(v) for k, v in mesh.shape.items()}, per_chip_batch,
                     global_batch, fits, memory, result.compile_seconds, result.lower_seconds,
                     result.compile_cpu_seconds, result.attention, result.collectives, oom=result.oom,
                     xla_optimal_seconds=result.optimal_seconds, extra=extra)


def train_remedies(config: ml_collections.ConfigDict, report: FitReport, mesh) -> list[str]:
    """What would bring the step under the chip's HBM, most effective first."""
    out = []
    mem, hbm = report.memory, report.topology.hbm_bytes
    fsdp = int(mesh.shape.get("fsdp", 1))
    if fsdp < report.topology.chips and (mem is None or mem.arguments > hbm // 10):
        wider = min(report.topology.chips, max(2 * fsdp, 8))
        out.append(f"FSDP width: --config.mesh.shape='((\"data\", -1), (\"fsdp\", {wider}))' shards the "
                   f"parameters and optimizer state over {wider} chips")
    if any(k.startswith("xla:") and int(k.split(":")[1].split("->")[0]) >= 1024 for k in report.attention):
        out.append("attention kernel: --config.model.attention_impl=splash (XLA attention materialises the "
                   "score matrices of the long self-attentions)")
    if not config.model.remat:
        out.append("remat: --config.model.remat=True recomputes each block's activations in the backward pass")
    if report.per_chip_batch > 1:
        smaller = max(1, report.per_chip_batch // 2)
        out.append(f"smaller batch: {smaller} per chip (--search-batch finds the largest that fits); "
                   f"--config.optim.grad_accum_steps keeps the global batch")
    return out


GROWTH = 4  # before any failure, a predicted probe is at most this many times the largest fitting batch


def search_batch(plan: Callable[[int], FitReport], start: int = 1, limit: int = 1024,
                 on_probe: Callable[[FitReport], None] | None = None) -> tuple[int | None, list[FitReport]]:
    """The largest per-chip batch for which ``plan(batch).fits``; each probe is one compile (tens of minutes at
    SD1.5 size on a small host), so the next batch is predicted from the per-chip peaks measured so far.

    A chip's peak grows about linearly with its batch (weights and optimizer state, plus activations per image), so
    the line through the two probes whose peaks lie nearest the chip's HBM (with one probe: through its
    batch-independent arguments) says where the HBM runs out; the prediction is kept inside the bracket known so
    far (largest fitting, smallest failing batch) and, before any failure, within ``GROWTH`` times the largest
    fitting batch. Where the peaks near the HBM stop growing (the compiler rematerialises to fit), the step past
    the largest fitting batch doubles instead. A probe refused for its size counts with the size the compiler asked for. Without figures it
    doubles from ``start`` to the first failure, then bisects. It ends when the bracket closes.
    -> (largest fitting batch or None, the probes in order)."""
    probes: list[FitReport] = []
    lo, hi = 0, None  # lo fits (0: none known), hi does not
    b, guided = max(1, start), False
    while True:
        width = None if hi is None else hi - lo
        report = plan(b)
        probes.append(report)
        if on_probe:
            on_probe(report)
        lo, hi = (max(lo, b), hi) if report.fits else (lo, b if hi is None else min(hi, b))
        if (hi is not None and hi - lo <= 1) or (hi is None and lo >= limit):
            return (lo or None), probes
        # a predicted probe that did not halve the bracket is followed by a bisection: never slower than it by
        # more than one probe in two, however far the peaks are from a line
        stalled = guided and width is not None and 2 * (hi - lo) > width
        guess = None if stalled else _predicted_batch(probes)
        guided = guess is not None
        if guess is None:
            b = min(2 * lo, limit) if hi is None else (lo + hi) // 2
            if b == 0:
                return None, probes
            continue
        b = min(max(guess, lo + 1), hi - 1 if hi is not None else min(GROWTH * lo, limit))


def _peak_of(report: FitReport) -> int | None:
    """The per-chip bytes a probe needs: its compiled peak, or what the compiler asked for when it refused it."""
    memory = getattr(report, "memory", None)
    if memory is not None:
        return memory.peak
    return (getattr(report, "oom", None) or {}).get("required_bytes")


def _predicted_batch(probes: list[FitReport]) -> int | None:
    """The largest batch whose peak the line through the measured probes puts within the chip's HBM."""
    points = sorted({r.per_chip_batch: _peak_of(r) for r in probes if _peak_of(r)}.items())
    if not points:
        return None
    hbm = probes[-1].topology.hbm_bytes
    if len(points) == 1:  # the line through the probe and its batch-independent bytes
        (b1, p1), = points
        memories = [r.memory for r in probes if r.per_chip_batch == b1 and getattr(r, "memory", None)]
        fixed = memories[0].arguments + memories[0].outputs - memories[0].aliased if memories else None
        if fixed is None or p1 <= fixed:
            return None
        slope, intercept = (p1 - fixed) / b1, fixed
    else:  # the two probes whose peaks lie nearest the chip's HBM (a secant step: it does not stall on a curve)
        (b1, p1), (b2, p2) = sorted(points, key=lambda p: abs(p[1] - hbm))[:2]
        slope = (p2 - p1) / (b2 - b1)
        intercept = p1 - slope * b1
    if slope <= 0:  # peaks near the HBM that stop growing: the compiler is rematerialising to fit, so the line
        # says nothing about the wall; go on past the largest fitting batch at twice its last step (a doubling
        # from there would compile a program twice too large, which costs as much and tells less)
        fitting = sorted(r.per_chip_batch for r in probes if r.fits)
        return fitting[-1] + 2 * (fitting[-1] - fitting[-2]) if len(fitting) >= 2 else None
    return max(1, int((hbm - intercept) // slope))

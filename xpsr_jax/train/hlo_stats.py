"""Figures read from a compiled program: its collectives (from the HLO text) and XLA's time estimate."""

from __future__ import annotations

import math
import re
from collections import defaultdict

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# `  %all-reduce.3 = (f32[8]{0}, bf16[4,4]{1,0}) all-reduce(...)` or the async pair `all-gather-start` /
# `all-gather-done`. An async op is counted at its `-done`, whose result is the collective's output (the `-start`
# result also holds the input buffers).
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.*?)\s(?P<op>" + "|".join(COLLECTIVES)
    + r")(?P<suffix>-start|-done)?\(",
    re.MULTILINE)
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+(?:e\d+m\d+\w*)?)\[([\d,]*)\]")


def _dtype_bytes(name: str) -> int:
    """``f32`` -> 4, ``bf16`` -> 2, ``c64`` -> 8, ``f8e4m3fn`` -> 1, ``pred`` -> 1: the width in the name, in bits."""
    bits = re.match(r"[a-z]+(\d+)", name)
    return max(1, int(bits.group(1)) // 8) if bits else 1


def shape_bytes(hlo_type: str) -> int:
    """Bytes of an HLO result type, tuples summed: ``(f32[8]{0}, bf16[4,4]{1,0})`` -> 64."""
    total = 0
    for dtype, dims in _ARRAY.findall(hlo_type):
        n = math.prod(int(d) for d in dims.split(",") if d)
        total += n * _dtype_bytes(dtype)
    return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """kind -> {"count", "bytes"} (bytes: per device, of each collective's output) for the kinds present."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"count": 0, "bytes": 0})
    for m in _INSTRUCTION.finditer(hlo_text):
        if m.group("suffix") == "-start":
            continue
        entry = out[m.group("op")]
        entry["count"] += 1
        entry["bytes"] += shape_bytes(m.group("type"))
    return {k: dict(out[k]) for k in COLLECTIVES if k in out}


def instruction_counts(hlo_text: str) -> dict[str, int]:
    """How large the optimised program is: HLO instructions, fusions, and computations (the compiler's work
    grows with these, not with tensor sizes)."""
    instructions = len(re.findall(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s", hlo_text, re.MULTILINE))
    fusions = len(re.findall(r"\sfusion\(", hlo_text))
    computations = len(re.findall(r"^(?:ENTRY\s+)?%?[\w.\-]+\s.*\{\s*$", hlo_text, re.MULTILINE))
    return {"instructions": instructions, "fusions": fusions, "computations": computations}


def optimal_seconds(compiled) -> float | None:
    """XLA's estimate of the program's run time on one device (TPU cost analysis), if it gives one."""
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        value = float(cost.get("optimal_seconds", 0.0)) if cost else 0.0
    except Exception:  # noqa: BLE001 - not every backend has a cost model
        return None
    return value if value > 0 else None

"""The ratios of one ``bench/run_gpu.sh`` run, from its JSON lines: one JSON line per comparison.

    python bench/gpu_summary.py bench-results/*.jsonl

- ``train``: per batch and encoder mode (``in_step``: both sides run the frozen VAE and text encoders;
  ``cached``: both read cached outputs), JAX vs torch_ref images per second, both MFUs, both peak memories, and
  whether the issue's targets hold (>= 3x at batch 16, >= 45 % MFU, peak no higher than PyTorch's);
- ``sr``: seconds per image, JAX at each batch vs the torch_ref pipeline (one image at a time), target >= 5x at
  batch 1, with each SR program's compiled peak at that batch (``sr_memory.py``);
- ``cold_start``: process start -> first step done, empty and warm persistent cache, target <= 60 s empty.

Lines that a script skipped (``"skipped"``) are reported as missing, never as zero; a target whose figure is
missing is ``null``, not false.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TRAIN_SPEEDUP, TRAIN_MFU, TRAIN_BATCH, SR_SPEEDUP, COLD_START_S = 3.0, 0.45, 16, 5.0, 60.0


def read(paths: list[str]) -> list[dict]:
    lines = []
    for path in paths:
        for text in Path(path).read_text().splitlines():
            text = text.strip()
            if text.startswith("{"):
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed run
    return lines


def _at_least(value, target) -> bool | None:
    """Whether a measured value meets its target; None when it was not measured."""
    return None if value is None else value >= target


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def train(lines: list[dict]) -> list[dict]:
    steps = [x for x in lines if x.get("what") == "train_step" and x.get("impl") and "skipped" not in x
             and "cold_start" not in x]
    out = []
    for key in sorted({(x["batch"], x.get("encoders", "in_step")) for x in steps}):
        pick = {x["impl"]: x for x in steps if (x["batch"], x.get("encoders", "in_step")) == key}
        jax_, torch_ = pick.get("jax"), pick.get("torch_ref")
        speedup = _ratio(jax_ and jax_["images_per_s"], torch_ and torch_["images_per_s"])
        mem = (jax_ or {}).get("peak_memory_bytes"), (torch_ or {}).get("peak_memory_bytes")
        line = {"what": "train", "batch": key[0], "encoders": key[1],
                "jax_images_per_s": jax_ and jax_["images_per_s"], "torch_images_per_s": torch_ and torch_["images_per_s"],
                "speedup": speedup, "jax_mfu": jax_ and jax_.get("mfu"), "torch_mfu": torch_ and torch_.get("mfu"),
                "jax_peak_gib": jax_ and jax_.get("peak_memory_gib"),
                "torch_peak_gib": torch_ and torch_.get("peak_memory_gib"),
                "device": (jax_ or torch_ or {}).get("device")}
        if key[0] == TRAIN_BATCH:
            mfu = (jax_ or {}).get("mfu")
            line["targets"] = {"speedup_3x": _at_least(speedup, TRAIN_SPEEDUP), "mfu_45": _at_least(mfu, TRAIN_MFU),
                               "memory_not_above_torch": None if None in mem else mem[0] <= mem[1]}
        out.append(line)
    return out


def sr(lines: list[dict]) -> list[dict]:
    runs = [x for x in lines if x.get("what") == "sr" and "skipped" not in x]
    torch_ = next((x for x in runs if x.get("impl") == "torch_ref"), None)
    programs = {}  # batch -> {program: compiled peak GiB} (sr_memory.py)
    for x in lines:
        if x.get("what") == "sr_memory":
            programs.setdefault(x["batch"], {})[x["program"]] = x["peak_gib"]
    out = []
    for x in sorted((x for x in runs if x.get("impl") == "jax"), key=lambda x: x["batch"]):
        speedup = _ratio(torch_ and torch_["seconds_per_image"], x["seconds_per_image"])
        line = {"what": "sr", "batch": x["batch"], "jax_seconds_per_image": x["seconds_per_image"],
                "torch_seconds_per_image": torch_ and torch_["seconds_per_image"], "speedup": speedup,
                "jax_peak_gib": x.get("peak_memory_gib"), "program_peak_gib": programs.get(x["batch"]),
                "device": x.get("device")}
        if x["batch"] == 1:
            line["targets"] = {"speedup_5x": _at_least(speedup, SR_SPEEDUP)}
        out.append(line)
    return out


def cold_start(lines: list[dict]) -> list[dict]:
    starts = sorted((x for x in lines if x.get("what") == "train_step" and "cold_start" in x),
                    key=lambda x: x["cold_start"])
    if not starts:
        return []
    empty, warm = starts[0], starts[1:]
    line = {"what": "cold_start", "batch": empty["batch"], "empty_cache_s": empty.get("cold_start_s"),
            "empty_cache_compile_s": empty.get("compile_s"), "warm_cache_s": [x.get("cold_start_s") for x in warm],
            "device": empty.get("device")}
    empty_s = line["empty_cache_s"]
    line["targets"] = {"empty_cache_60s": None if empty_s is None else empty_s <= COLD_START_S}
    return [line]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    lines = read(argv)
    for line in train(lines) + sr(lines) + cold_start(lines):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

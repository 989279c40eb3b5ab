"""What the model benchmarks share: device facts, ahead-of-time compile and timing, XLA's own counts, the PyTorch
side's timing, and the one JSON line format.

Every measurement is one JSON object on stdout with the same fields (see :func:`record`). A field that cannot be
measured here (no device peak on a CPU, no memory statistics, no torch) is ``null`` and ``null_reasons`` says why,
so a missing optional piece never stops a run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def emit(rec: dict) -> None:
    print(json.dumps(rec), flush=True)


def add_common_args(p: argparse.ArgumentParser, iters: int = 5, warmup: int = 1) -> None:
    p.add_argument("--iters", type=int, default=iters, help="timed calls; the median is reported")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed calls after compiling")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="device peak (dense bf16 TFLOP/s) for MFU; 0 = look the device kind up")


# --- JAX side ---------------------------------------------------------------------------------------------------
def device_facts() -> dict:
    import jax

    d = jax.local_devices()[0]
    return {"device": d.device_kind, "backend": jax.default_backend(), "device_count": jax.device_count(),
            "jax": jax.__version__}


def peak_tflops(configured: float) -> tuple[float | None, str | None]:
    from xpsr_jax.train.monitor import device_peak_tflops

    peak = device_peak_tflops(configured)
    return (peak, None) if peak else (None, "device peak unknown (pass --peak-tflops)")


def aot_compile(jitted, *args) -> tuple[Any, float]:
    """Lower and compile once, so the compile is timed apart from the first run and the executable can be asked
    for its FLOPs and memory."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def xla_flops(analysed) -> tuple[float | None, str | None]:
    """FLOPs from XLA's cost analysis of a compiled (or only lowered) computation."""
    try:
        cost = analysed.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and cost.get("flops"):
            return float(cost["flops"]), None
        return None, "cost analysis has no flops on this backend"
    except Exception as e:  # noqa: BLE001 - some backends do not implement it
        return None, f"cost analysis unavailable: {type(e).__name__}"


def on_cpu(tree: Any) -> Any:
    """Shapes of ``tree`` placed on one CPU device, to lower a function for the CPU backend (see flop_counts)."""
    import jax
    from jax.sharding import SingleDeviceSharding

    cpu = SingleDeviceSharding(jax.devices("cpu")[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), tree)


def flop_counts(compiled, lower_for_count: Callable[[], Any], recount: bool) -> tuple[float | None, str | None, dict]:
    """FLOPs per call for MFU -> (flops, reason if None, extra fields).

    The compiled count is right only for one CPU device: on a GPU the matmuls and convolutions become cuBLAS/cuDNN
    custom calls that XLA's cost analysis does not count (nor cuDNN attention), and a sharded program is counted
    per device. With ``recount``, ``lower_for_count`` lowers (no compile) the same call for one CPU device with XLA
    attention and no remat (see :func:`on_cpu`); the unoptimised HLO holds every dot and convolution of the whole
    batch. The CPU backend because PJRT plugins (the GPU one) do not analyse a lowered module.
    """
    flops, reason = xla_flops(compiled)
    extra = {"flops_source": "compiled", "flops_compiled_per_call": flops}
    if not recount:
        return flops, reason, extra
    try:
        again, why = xla_flops(lower_for_count())
    except Exception as e:  # noqa: BLE001 - the recount refines the figure; without it the compiled one stands
        again, why = None, f"{type(e).__name__}: {str(e)[:200]}"
    if again:
        return again, None, {**extra, "flops_source": "lowered HLO on one CPU device, xla attention, no remat"}
    return flops, reason, {**extra, "flops_recount_failed": why}


def program_bytes(compiled) -> tuple[int | None, str | None]:
    """Bytes one call of the executable needs (arguments + outputs + temporaries - aliased), by XLA's plan.
    Unlike the allocator's peak this is per measurement, and it exists on CPU too."""
    try:
        m = compiled.memory_analysis()
        total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)
        return int(total), None
    except Exception as e:  # noqa: BLE001
        return None, f"memory analysis unavailable: {type(e).__name__}"


def jax_peak_bytes() -> tuple[int | None, str | None]:
    """The allocator's peak since the process started (JAX cannot reset it: run one measurement per process for
    a clean figure)."""
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), None
    return None, f"no memory statistics on {jax.default_backend()}"


def time_calls(call: Callable[[], Any], sync: Callable[[Any], Any], warmup: int, iters: int) -> list[float]:
    """Seconds of each of ``iters`` calls after ``warmup`` untimed ones; ``sync`` waits for the result (JAX
    dispatches asynchronously, CUDA too)."""
    for _ in range(warmup):
        sync(call())
    times = []
    for _ in range(max(iters, 1)):
        t0 = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - t0)
    return times


def block(x):
    import jax

    return jax.block_until_ready(x)


def dtype_of(name: str):
    import jax.numpy as jnp

    return jnp.dtype(name)


def fresh_module_params(module, seed: int, *example_args, zero_modules=()) -> Any:
    """PyTorch-default random parameters of a linen module on the host, from its shapes alone: linen's ``init``
    would compile the whole forward pass first (minutes at SD1.5 size)."""
    import flax.linen as nn
    import jax

    from xpsr_jax.nn.init import fresh_params

    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *example_args))["params"]
    return fresh_params(nn.unbox(abstract), seed, zero_modules)


# --- PyTorch side -----------------------------------------------------------------------------------------------
class TorchEnv:
    """torch, the device it runs on, and the autocast that matches the JAX compute dtype; ``torch`` is None with
    ``reason`` set when it cannot run."""

    def __init__(self, dtype: str, allow_cpu: bool = True):
        self.torch, self.reason, self.device = None, None, "cpu"
        try:
            import torch
        except ImportError:
            self.reason = "torch is not installed"
            return
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu" and not allow_cpu:
            self.reason = "no CUDA device"
            return
        self.torch = torch
        self.dtype = dtype
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    @property
    def kind(self) -> str:
        if self.device == "cuda":
            return self.torch.cuda.get_device_name(0)
        return "cpu"

    def autocast(self):
        # fp32 weights with bf16 autocast: how the official code trains and how the anchors were measured.
        if self.dtype == "bfloat16":
            return self.torch.autocast(self.device, dtype=self.torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self, _=None):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def peak_bytes(self) -> tuple[int | None, str | None]:
        if self.device == "cuda":
            return int(self.torch.cuda.max_memory_allocated()), None
        return None, "torch records peak memory on CUDA only"

    def count_flops(self, call: Callable[[], Any]) -> tuple[float | None, str | None]:
        """FLOPs of one call as PyTorch's FlopCounterMode counts them (matmuls and convolutions)."""
        try:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                call()
            return float(counter.get_total_flops()), None
        except Exception as e:  # noqa: BLE001
            return None, f"torch flop counter failed: {type(e).__name__}"

    def seed(self, seed: int) -> None:
        self.torch.manual_seed(seed)

    def randn(self, *shape):
        return self.torch.randn(*shape, device=self.device)


def skipped(what: str, impl: str, config: str, batch: int | None, reason: str, **extra) -> dict:
    """The line printed instead of a measurement that could not run (with the JAX device unless given)."""
    if "device" not in extra:
        extra = {**device_facts(), **extra}
    return {"what": what, "impl": impl, "config": config, "batch": batch, "skipped": reason, **extra}


# --- the JSON line ----------------------------------------------------------------------------------------------
def record(*, what: str, impl: str, device: dict, config: str, batch: int, dtype: str, times: list[float],
           flops_per_call: float | None, compile_s: float | None, peak_tflops_value: float | None,
           peak_bytes: int | None, reasons: dict[str, str | None], devices: int = 1, **extra) -> dict:
    """One measurement. ``flops_per_call`` counts a whole call over ``batch`` images; MFU is against
    ``devices`` x the device's peak."""
    seconds = statistics.median(times)
    flops_img = flops_per_call / batch if flops_per_call else None
    if extra.get("flops_compiled_per_call") is not None:
        extra["flops_per_image_compiled"] = extra.pop("flops_compiled_per_call") / batch
    achieved = flops_per_call / seconds / 1e12 if flops_per_call else None
    mfu = achieved / (peak_tflops_value * devices) if achieved and peak_tflops_value else None
    null_reasons = {k: v for k, v in reasons.items() if v}
    if flops_per_call is None:
        null_reasons.setdefault("flops_per_image", "not counted")
    if mfu is None and "mfu" not in null_reasons:
        null_reasons["mfu"] = null_reasons.get("peak_tflops") or null_reasons.get("flops_per_image")
    rec = {
        "what": what, "impl": impl, **device, "config": config, "batch": batch, "dtype": dtype,
        "seconds": round(seconds, 6), "seconds_min": round(min(times), 6), "iters": len(times),
        "images_per_s": round(batch / seconds, 3),
        "flops_per_image": flops_img, "tflops_per_s": _round(achieved, 3),
        "peak_tflops": peak_tflops_value, "mfu": _round(mfu, 4),
        "peak_memory_bytes": peak_bytes, "peak_memory_gib": _round(peak_bytes / 2**30 if peak_bytes else None, 3),
        "compile_s": _round(compile_s, 3),
        **extra,
        "null_reasons": null_reasons,
    }
    return rec


def _round(x, n):
    return None if x is None else round(x, n)

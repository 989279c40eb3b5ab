"""Watching a run: TensorBoard events, a console progress bar with ETA, throughput and MFU. Process 0 only."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import jax

# Dense bf16 peak TFLOP/s by device kind (what MFU is measured against).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0,
               "TPU v4": 275.0, "TPU v6 lite": 918.0}


def device_peak_tflops(configured: float) -> float | None:
    if configured:
        return configured
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peak
    return None


class Monitor:
    def __init__(self, config, workdir: Path, trainer):
        self.config = config
        self.is_main = jax.process_index() == 0
        self.peak = device_peak_tflops(config.device_peak_tflops)
        # counting costs a trace of the step: only where MFU can be reported
        self.flops_per_step = trainer.global_flops_per_step if (self.peak and jax.process_index() == 0) else None
        self.writer = None
        self.log_file = None
        self._bar = None
        if self.is_main:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(workdir / "tensorboard"))
            self.log_file = open(workdir / "metrics.jsonl", "a")
            flops = f"; {self.flops_per_step:.4g} FLOPs per step" if self.flops_per_step else ""
            self.log_text(f"train step compiled in {trainer.compile_seconds:.1f} s{flops}")

    @contextlib.contextmanager
    def progress(self, start: int, total: int):
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not self.is_main,
                         dynamic_ncols=True)
        try:
            yield self._bar
        finally:
            self._bar.close()

    def step(self, step: int, metrics: dict, seconds: float) -> None:
        if not self.is_main or (step % self.config.log_every and step != self.config.num_train_steps):
            return
        row = {k: float(v) for k, v in metrics.items()}
        row["img_per_s"] = self.config.global_batch_size / seconds
        if self.flops_per_step and self.peak:
            row["mfu"] = self.flops_per_step / seconds / (self.peak * 1e12 * jax.device_count())
            row["tflops_per_device"] = self.flops_per_step / seconds / 1e12 / jax.device_count()
        for k, v in row.items():
            self.writer.add_scalar(f"train/{k}", v, step)
        self.log_file.write(json.dumps({"step": step, **row}) + "\n")
        self.log_file.flush()
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.1f}")

    def log_text(self, text: str) -> None:
        if self.is_main:
            (self._bar.write if self._bar is not None else print)(text)
            if self.writer is not None:
                self.writer.add_text("log", text)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.log_file is not None:
            self.log_file.close()

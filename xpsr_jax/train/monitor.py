"""Watching a run: TensorBoard events, ``metrics.jsonl``, a console progress bar with ETA, throughput and MFU.
Process 0 only."""

from __future__ import annotations

import contextlib
import json
import os

import jax

from xpsr_jax.train.mirror import WorkdirMirror

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
    """Process 0 writes ``metrics.jsonl`` and TensorBoard events into ``files_dir``: the workdir, or for a gs://
    workdir a local folder that :meth:`sync` copies up (see :mod:`xpsr_jax.train.mirror`)."""

    def __init__(self, config, workdir: str | os.PathLike, trainer):
        self.config = config
        self.is_main = jax.process_index() == 0
        self.peak = device_peak_tflops(config.device_peak_tflops)
        # counting costs a trace of the step: only where MFU can be reported
        self.flops_per_step = trainer.global_flops_per_step if (self.peak and jax.process_index() == 0) else None
        self.mirror = WorkdirMirror(workdir) if self.is_main else None
        self.files_dir = self.mirror.local if self.is_main else None
        self._writer = None
        self._event_files = 0
        self.log_file = None
        self._bar = None
        if self.is_main:
            self.log_file = open(self.files_dir / "metrics.jsonl", "a")
            flops = f"; {self.flops_per_step:.4g} FLOPs per step" if self.flops_per_step else ""
            self.log_text(f"train step compiled in {trainer.compile_seconds:.1f} s{flops}")

    @property
    def writer(self):
        """The TensorBoard writer of process 0 (None elsewhere), opened on first use: after each :meth:`sync` a
        new event file starts, so a bucket receives every event file once, complete."""
        if self.is_main and self._writer is None:
            from tensorboardX import SummaryWriter

            self._event_files += 1
            self._writer = SummaryWriter(str(self.files_dir / "tensorboard"),
                                         filename_suffix=f".{os.getpid()}.{self._event_files}")
        return self._writer

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

    def sync(self) -> None:
        """Copy the new metrics and events up to a gs:// workdir (at each checkpoint; nothing to do locally)."""
        if self.mirror is None or self.mirror.remote is None:
            return
        self.log_file.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.mirror.sync()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.log_file is not None:
            self.log_file.close()
        if self.mirror is not None:
            self.mirror.close()

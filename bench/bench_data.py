"""Throughput of the training input pipeline (xpsr_jax/data/pipeline.py) at SD1.5 batch sizes, 512² pairs.

Builds a small make-data output (real photos from scikit-image when installed, else procedural pictures) unless
``--records`` names one, then prints one JSON line per (batch size, worker count): batches/s and images/s after a
warm-up (worker start-up and the first batches are reported apart as ``first_batch_s``). ``--online`` measures
online degradation from HR-only records instead (the Real-ESRGAN chain runs in the loader).

    python bench/bench_data.py
    python bench/bench_data.py --batch-sizes 8 16 --workers 0 4 --batches 20 --threads 2
    python bench/bench_data.py --records data/pairs --online
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_records(folder: Path, n_images: int, hr_only: bool) -> Path:
    """A make-data output of ``n_images`` pairs (or HR-only records) in ``folder``."""
    import cv2

    from xpsr_jax.data.make_data import MakeDataConfig, make_data
    from xpsr_jax.data.synthetic import sample_photos

    hr = folder / "hr"
    hr.mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(sample_photos(n_images, max_side=800, seed=1)):
        cv2.imwrite(str(hr / f"{i:03d}.png"), photo[..., ::-1])
    out = folder / "records_out"
    make_data(MakeDataConfig(source=str(hr), out=str(out), workers=min(os.cpu_count() or 1, 4), shard_size=8,
                             hr_only=hr_only, progress=False))
    return out


def measure(source, batch: int, workers: int, threads: int, batches: int, online: bool) -> dict:
    from xpsr_jax.data.pipeline import PipelineConfig, make_iterator

    cfg = PipelineConfig(batch_size=batch, worker_count=workers, num_threads=threads, online_degradation=online,
                         prefetch_batches=max(2, threads))
    start = time.perf_counter()
    it = make_iterator(source, cfg, process_index=0, process_count=1)
    try:
        first = next(it)
        first_s = time.perf_counter() - start
        next(it)  # one more: workers and threads are all busy from here on
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        seconds = time.perf_counter() - t0
    finally:
        it.close()  # stops prefetch threads and worker processes
    shape = list(first["hr"].shape)
    return {"what": "input_pipeline", "config": {"online_degradation": online, "threads": threads,
                                                 "cpu_count": os.cpu_count(), "cpu": platform.machine()},
            "batch": batch, "workers": workers, "shape": shape, "batches": batches, "seconds": round(seconds, 3),
            "batches_per_s": round(batches / seconds, 3), "images_per_s": round(batches * batch / seconds, 2),
            "first_batch_s": round(first_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", help="an existing make-data output (default: build a small one)")
    parser.add_argument("--images", type=int, default=6, help="images in the built output (default: 6)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts to compare")
    parser.add_argument("--threads", type=int, default=2, help="threads per process (default: 2)")
    parser.add_argument("--batches", type=int, default=20,
                        help="timed batches per setting; enough to drain the prefetch buffers (default: 20)")
    parser.add_argument("--online", action="store_true", help="online degradation from HR-only records")
    args = parser.parse_args()

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # grain logs every worker start at INFO
    from xpsr_jax.data.pipeline import records_source

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.records) if args.records else build_records(Path(tmp), args.images, args.online)
        source = records_source(out)
        for batch in args.batch_sizes:
            for workers in args.workers:
                print(json.dumps(measure(source, batch, workers, args.threads, args.batches, args.online)),
                      flush=True)


if __name__ == "__main__":
    main()

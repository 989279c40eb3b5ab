"""Throughput of the Real-ESRGAN degradation chain (xpsr_jax/data) on one CPU core.

Prints JSON lines: one with degraded pairs per second at the configured crop size (512² by default), then one per
step of the chain with its mean milliseconds per pair and share of the total. Threads are pinned to one so the
number is per core; run one process per core to fill a machine.

    python bench/bench_degradations.py --n 20
    python bench/bench_degradations.py --n 20 --per-batch 10
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before NumPy loads its BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xpsr_jax.data.degradation_config import DegradationConfig  # noqa: E402
from xpsr_jax.data.degradations import degrade_batch, degrade_pair  # noqa: E402


def test_picture(size: int, seed: int) -> np.ndarray:
    """uint8 RGB picture a bit larger than the crop: shading, edges and fine texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = 0.5 + 0.25 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 0.15 * ((xx // 23 + yy // 17) % 2)
    img = base[..., None] + rng.normal(0, 0.03, (size, size, 3))
    return np.clip(img * 200, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="pairs to time (after one warm-up pair)")
    parser.add_argument("--gt-size", type=int, default=512)
    parser.add_argument("--per-batch", type=int, default=0, metavar="B",
                        help="degrade in batches of B sharing the batch-level draws (official behaviour)")
    parser.add_argument("--no-usm", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cv2.setNumThreads(1)
    cfg = DegradationConfig(gt_size=args.gt_size, use_usm=not args.no_usm)
    img = test_picture(args.gt_size + 88, args.seed)
    rng = np.random.default_rng(args.seed)
    degrade_pair(img, rng, cfg)  # warm-up: imports, caches

    timings: dict = {}
    start = time.perf_counter()
    if args.per_batch:
        done = 0
        while done < args.n:
            b = min(args.per_batch, args.n - done)
            degrade_batch([img] * b, rng, cfg, per_batch=True, timings=timings)
            done += b
    else:
        for _ in range(args.n):
            degrade_pair(img, rng, cfg, timings=timings)
    seconds = time.perf_counter() - start

    config = {"gt_size": args.gt_size, "lr_size": cfg.lr_size, "usm": cfg.use_usm,
              "sharing": f"per_batch={args.per_batch}" if args.per_batch else "per_sample", "threads": 1,
              "cpu": platform.processor() or platform.machine()}
    print(json.dumps({"what": "degrade_pair", "config": config, "pairs": args.n, "seconds": round(seconds, 3),
                      "pairs_per_s_per_core": round(args.n / seconds, 2),
                      "ms_per_pair": round(1000 * seconds / args.n, 1)}))
    total = sum(timings.values())
    for step, secs in sorted(timings.items(), key=lambda kv: -kv[1]):
        print(json.dumps({"what": "degrade_step", "step": step, "ms_per_pair": round(1000 * secs / args.n, 2),
                          "share": round(secs / total, 3)}))


if __name__ == "__main__":
    main()

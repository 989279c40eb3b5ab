"""Attention kernels compared ahead of time for a TPU chip from any host (libtpu, no TPU): one JSON line per case.

Forward + backward of one attention call, compiled for a TPU slice with the batch split over its chips; prints
the kernel each case got, per-chip temporaries and XLA's ``optimal_seconds`` (null or negative where XLA cannot
estimate: splash kernels are opaque to its cost model, as are their FLOPs). These figures chose the splash
threshold and kept the 77-token cross-attention on XLA (``xpsr_jax/nn/attention.py``).

    python bench/bench_attention_tpu.py                                  # SD1.5's attention shapes on v5e
    python bench/bench_attention_tpu.py --topology v6e:2x2 --cases 4096,4096,8,40
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# SD1.5 at 512 px: self-attention at each level (tokens, heads, head dim) and the cross-attention to 77 tokens
SD15_CASES = ("4096,4096,8,40", "1024,1024,8,80", "256,256,8,160", "4096,77,8,40")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default="v5e:2x2", help="get_topology_desc name of the slice")
    p.add_argument("--per-chip-batch", type=int, default=8)
    p.add_argument("--cases", nargs="+", default=SD15_CASES, help="Q_LEN,KV_LEN,HEADS,HEAD_DIM")
    p.add_argument("--impls", nargs="+", default=("xla", "splash"))
    args = p.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the TPU is only a compile target
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from xpsr_jax.nn import attention

    devices = topologies.get_topology_desc(platform="tpu", topology_name=args.topology).devices
    mesh = Mesh(np.array(devices), ("data",))
    batch = args.per_chip_batch * len(devices)
    for case in args.cases:
        tq, tk, heads, head_dim = map(int, case.split(","))
        for impl in args.impls:
            # a threshold that sends this call where the case asks, whatever its lengths
            policy = attention.AttentionImpl(impl, splash_min_length=1 if impl == "splash" else 1 << 30)
            loss = lambda q, k, v, policy=policy: jnp.sum(  # noqa: E731
                attention.dot_product_attention(q, k, v, policy).astype(jnp.float32))
            spec = lambda t: jax.ShapeDtypeStruct((batch, t, heads, head_dim), jnp.bfloat16,  # noqa: E731
                                                  sharding=NamedSharding(mesh, P("data")))
            t0 = time.perf_counter()
            with jax.set_mesh(mesh), nn.logical_axis_rules((("batch", "data"),)), attention.recording() as log:
                compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(spec(tq), spec(tk), spec(tk)).compile()
            seconds = time.perf_counter() - t0
            mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
            cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
            print(json.dumps({
                "what": "attention fwd+bwd", "topology": args.topology, "device_kind": devices[0].device_kind,
                "kernel": log[0].impl, "q_len": tq, "kv_len": tk, "heads": heads, "head_dim": head_dim,
                "dtype": "bfloat16", "per_chip_batch": args.per_chip_batch,
                "temp_mib": round(mem.temp_size_in_bytes / 2**20, 1),
                "argument_mib": round(mem.argument_size_in_bytes / 2**20, 1),
                "optimal_seconds": cost.get("optimal_seconds"), "flops": cost.get("flops"),
                "mosaic_in_program": "tpu_custom_call" in compiled.as_text(), "compile_seconds": round(seconds, 1),
            }), flush=True)


if __name__ == "__main__":
    main()

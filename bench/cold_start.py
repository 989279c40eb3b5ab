"""Where a training run's cold start goes: process start -> imports -> state planning -> lowering -> compile ->
train state -> first step done, for the step ``xpsr-jax train`` builds, one fresh process per measurement.

Modes, run in this order against one scratch folder:

- ``empty``: JAX's persistent compilation cache on, empty (the first start of a run);
- ``warm``: the same cache, now holding the run's programs (a restart on the same machine);
- ``serialized``: the train step loaded from the run's serialized executable (``xpsr_jax.train.executable_cache``,
  written by the ``empty`` start), so it is neither lowered nor compiled; the small programs (state creation)
  still come from the warm cache;
- ``none``: no persistent cache and no serialized step (what every start costs without either), if ``--with-none``.

Each mode runs ``--repeats`` times (the ``empty`` one once). Prints one JSON line per start (phases in seconds)::

    python bench/cold_start.py --out bench/results/cold-start-cpu.jsonl               # tiny, 8 CPU devices
    python bench/cold_start.py --config xpsr_sd15 --mesh "(('data', -1), ('fsdp', 1))"  # on a GPU host

The ``tiny`` default is ``xpsr-jax train --config tiny`` on the 8-device CPU mesh (data 4 x fsdp 2).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPAWN_ENV = "XPSR_COLD_START_SPAWNED_AT"
MODES = ("empty", "warm", "serialized", "none")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--mesh", default="(('data', 4), ('fsdp', 2))")
    ap.add_argument("--repeats", type=int, default=2, help="starts per mode after the empty one")
    ap.add_argument("--with-none", action="store_true", help="also time starts with no cache at all")
    ap.add_argument("--scratch", type=Path, help="default: a temporary folder, removed at the end")
    ap.add_argument("--out", type=Path, help="append the JSON lines here too")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="xpsr-cold-start-"))
    shutil.rmtree(scratch / "jax-cache", ignore_errors=True)
    shutil.rmtree(scratch / "compiled", ignore_errors=True)
    plan = ["empty"] + ["warm", "serialized"] * args.repeats + ["none"] * (args.repeats if args.with_none else 0)
    try:
        for mode in plan:
            env = dict(os.environ)
            env.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
            env.setdefault("JAX_PLATFORMS", "cpu")
            env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the scratch cache, so that "empty" is empty
            env[SPAWN_ENV] = repr(time.time())
            cmd = [sys.executable, __file__, "--child", mode, "--config", args.config, "--mesh", args.mesh,
                   "--scratch", str(scratch)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode or not lines:
                rec = {"what": "cold_start", "mode": mode, "error": f"exit {out.returncode}",
                       "stderr": out.stderr[-2000:]}
            else:
                rec = json.loads(lines[-1])
            emit(rec, args.out)
            if "error" in rec:
                return 1
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def emit(rec: dict, out: Path | None) -> None:
    line = json.dumps(rec)
    print(line, flush=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(line + "\n")


def child(args) -> int:
    """One start, timed phase by phase, as ``train_and_evaluate`` makes it (fresh parameters, no checkpoint)."""
    t_main = time.time()
    spawned = float(os.environ.get(SPAWN_ENV, t_main))
    phases = {"process_start": t_main - spawned}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    import jax
    import numpy as np

    from xpsr_jax.train import executable_cache, partition
    from xpsr_jax.train.cli import load_config
    from xpsr_jax.train.loop import global_batch
    from xpsr_jax.train.synthetic import SyntheticIterator
    from xpsr_jax.train.trainer import Trainer, batch_spec, lower_step, plan_state
    lap("imports")

    cache = args.scratch / "jax-cache"
    if args.child != "none":
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    config = load_config(args.config, [f"--config.mesh.shape={args.mesh}"])
    mesh = partition.make_mesh(tuple(tuple(a) for a in ast.literal_eval(args.mesh)))
    lap("devices_and_mesh")
    plan = plan_state(config, mesh)
    lap("plan_state")

    folder = args.scratch / "compiled"
    key = executable_cache.step_key(config, mesh)
    compiled, note = None, ""
    if args.child == "serialized":
        found = executable_cache.load(folder, key)
        compiled, note = found.compiled, found.reason
        phases["lower"] = 0.0
        lap("load_executable")
    if compiled is None:
        lowered = lower_step(config, plan)
        lap("lower")
        compiled = lowered.compile()
        lap("compile")
    shardings = {k: partition.batch_sharding(mesh, plan.rules, len(v.shape)) for k, v in batch_spec(config).items()}
    trainer = Trainer(config, plan, shardings, compiled, 0.0, None)

    params = partition.host_to_global(plan.nets.fresh_params(config.seed), plan.param_shardings)
    state = plan.state_from_params(params, jax.random.key(config.seed))
    jax.block_until_ready(state)
    lap("train_state")
    data = SyntheticIterator(config.global_batch_size, config.data.resolution, config.seed)
    state, metrics = trainer.step(state, global_batch(trainer, next(data)))
    loss = float(jax.device_get(metrics["loss"]))
    lap("first_step")
    total = time.time() - spawned

    if args.child == "empty":  # keep the step for the "serialized" starts (not timed)
        note = executable_cache.store(folder, key, compiled)
    files = sum(1 for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0
    print(json.dumps({
        "what": "cold_start", "mode": args.child, "config": args.config, "mesh": args.mesh,
        "device": jax.devices()[0].device_kind, "device_count": jax.device_count(), "jax": jax.__version__,
        "total_s": round(total, 3), **{f"{k}_s": round(v, 3) for k, v in phases.items()},
        "loss": loss, "finite": bool(np.isfinite(loss)), "cache_files_after": files, "note": note,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

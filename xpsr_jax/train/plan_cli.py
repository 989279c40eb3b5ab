"""``xpsr-jax train --compile-only --topology v5p-64``: plan a TPU slice from any host (see ``train/plan.py``).

Prints one JSON line per compile (``--search-batch``: one per probe, then the answer) and exits 0 when the step
fits the slice's chips, ``EXIT_DOES_NOT_FIT`` when it does not, naming what would help on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from xpsr_jax.args import positive_int

EXIT_DOES_NOT_FIT = 3

PLAN_HELP = """planning (no TPU needed; needs libtpu: pip install 'jax[tpu]' at this JAX's version):
  xpsr-jax train --config xpsr_sd15 --compile-only --topology v5p-8
  xpsr-jax train --config xpsr_sd15 --compile-only --topology v5p-64 --config.mesh.shape='(("data",-1),("fsdp",8))'
  xpsr-jax train --config xpsr_sd15 --compile-only --topology v5e-8 --search-batch
exit status 0: fits; 3: does not fit (stderr names what would help). JAX_COMPILATION_CACHE_DIR=DIR keeps
compiled programs for the next run.
"""


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("planning a TPU slice (compile only)")
    g.add_argument("--compile-only", action="store_true",
                   help="compile the train step for --topology and report per-chip memory and whether it fits; "
                        "trains nothing, needs no --workdir")
    g.add_argument("--topology", help="Cloud TPU accelerator type: v4-8, v5e-8 (v5litepod-8), v5p-8, v5p-64, v6e-8 ...")
    g.add_argument("--per-chip-batch", type=positive_int,
                   help="images per chip (default: the config's global_batch_size over the data-parallel chips)")
    g.add_argument("--search-batch", action="store_true",
                   help="find the largest per-chip batch that fits (one compile per probe; each next batch predicted "
                        "from the peaks measured so far, else doubling, then bisection)")


def check_plan_arguments(args) -> None:
    """Usage errors of the planning flags, before anything heavy is imported."""
    from xpsr_jax.errors import UsageError

    planning = args.topology or args.search_batch or args.per_chip_batch
    if planning and not args.compile_only:
        raise UsageError("--topology, --per-chip-batch and --search-batch plan a slice: add --compile-only")
    if args.compile_only and not args.topology:
        raise UsageError("--compile-only needs --topology (e.g. v5p-8, v5e-8, v6e-8)")
    if args.compile_only:
        from xpsr_jax.train.tpu_topology import parse

        try:
            parse(args.topology)
        except ValueError as e:
            raise UsageError(str(e)) from None


def run_plan(args, config) -> int:
    """Compile for the slice and print the JSON line(s); -> exit status."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # a second planner (or test) may hold libtpu
    from xpsr_jax.train.plan import plan_train_step, search_batch

    name = args.config

    def emit(report) -> None:
        print(json.dumps(report.as_json()), flush=True)

    if not args.search_batch:
        report = plan_train_step(config, args.topology, args.per_chip_batch, config_name=name)
        emit(report)
        if not report.fits:
            _explain(report)
            return EXIT_DOES_NOT_FIT
        return 0

    from xpsr_jax.train import plan_cache

    probes = []

    def probe(batch):
        if plan_cache.cache_dir() is not None:  # compile in a fresh process; its figures come back by the cache
            _compile_in_child(args, batch)
        probes.append(plan_train_step(config, args.topology, batch, config_name=name, count_flops=False))
        return probes[-1]

    from xpsr_jax.train.tpu_topology import parse

    summary = {"what": "plan_search_batch", "config": name, "topology": parse(args.topology).name}
    try:
        best, _ = search_batch(probe, start=args.per_chip_batch or 1, on_probe=emit)
    except ProbeFailed as e:
        best = max((r.per_chip_batch for r in probes if r.fits), default=None)
        summary["stopped"] = {"per_chip_batch": e.batch, "exit": e.returncode}
        print(json.dumps(summary | {"largest_per_chip_batch": best, "probes": _probe_list(probes)}), flush=True)
        print(f"search stopped: {e}; the largest per-chip batch that fitted so far: {best}", file=sys.stderr)
        return 1
    print(json.dumps(summary | {"largest_per_chip_batch": best, "probes": _probe_list(probes)}), flush=True)
    if best is None:
        _explain(probes[-1])
        return EXIT_DOES_NOT_FIT
    return 0


class ProbeFailed(RuntimeError):
    def __init__(self, batch: int, returncode: int):
        why = " (signal 9: most likely the host's out-of-memory killer)" if returncode == -9 else ""
        super().__init__(f"the compile at {batch} per chip exited with status {returncode}{why}")
        self.batch, self.returncode = batch, returncode


def probe_command(args, batch: int) -> list[str]:
    """This command line with ``--per-chip-batch batch`` in place of the search."""
    argv = ["train", "--config", args.config, "--compile-only", "--topology", args.topology,
            "--per-chip-batch", str(batch), *getattr(args, "config_overrides", [])]
    return [sys.executable, "-c", "import sys; from xpsr_jax.cli import main; sys.exit(main(sys.argv[1:]))", *argv]


def _compile_in_child(args, batch: int) -> None:
    """One probe's compile in its own process. A process that compiles several SD1.5 programs keeps much of the
    memory of the earlier ones (measured on a 24 GiB host: the probe after a fitting one was killed for memory),
    and a probe killed there takes the answers of the earlier probes with it; in a child it takes nothing."""
    child = subprocess.run(probe_command(args, batch), stdout=subprocess.DEVNULL)
    if child.returncode not in (0, EXIT_DOES_NOT_FIT):
        raise ProbeFailed(batch, child.returncode)


def _probe_list(probes) -> list[dict]:
    return [{"per_chip_batch": r.per_chip_batch, "fits": r.fits, "peak_bytes": r.memory.peak if r.memory else None,
             "compile_seconds": round(r.compile_seconds, 1)} for r in probes]


def _explain(report) -> None:
    need = report.memory.peak if report.memory else (report.oom or {}).get("required_bytes")
    gib = f"{need / (1 << 30):.2f} GiB" if need else "more than it has"
    lines = [f"does not fit: the step needs {gib} per chip, a {report.topology.name} chip has "
             f"{report.topology.hbm_bytes / (1 << 30):.2f} GiB; what would help:"]
    lines += [f"  - {r}" for r in report.remedies]
    print("\n".join(lines), file=sys.stderr)


# --- xpsr-jax sr --compile-only ----------------------------------------------------------------------------------
SR_PLAN_HELP = """planning (no TPU needed; needs libtpu): the denoise loop for a slice, images sharded over its chips
  xpsr-jax sr --compile-only --topology v5e-1 --batch-size 8 --dtype bfloat16
  xpsr-jax sr --compile-only --topology v5e-1 --process-size 2048 --dtype bfloat16   # tiled as the pipeline would
"""


def add_sr_plan_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("planning a TPU slice (compile only; no INPUT, OUT or --weights needed)")
    g.add_argument("--compile-only", action="store_true",
                   help="compile the denoise loop for --topology at --process-size and --batch-size and report "
                        "per-chip memory; the UNet config comes from --weights when given, else SD1.5's")
    g.add_argument("--topology", help="Cloud TPU accelerator type: v5e-1, v5e-8, v6e-8, v5p-8 ...")


def run_sr_plan(args, settings) -> int:
    from xpsr_jax.errors import UsageError
    from xpsr_jax.train.tpu_topology import parse

    if not args.topology:
        raise UsageError("--compile-only needs --topology (e.g. v5e-1)")
    try:
        topology = parse(args.topology)
    except ValueError as e:
        raise UsageError(str(e)) from None
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from xpsr_jax.infer.plan import plan_denoise

    unet_config = vae_config = None
    if args.weights is not None:
        from xpsr_jax.models.vae_config import VAEConfig
        from xpsr_jax.weights import checkpoint

        meta = checkpoint.read_meta(args.weights)
        unet_config = checkpoint.unet_config(meta)
        vae_config = VAEConfig(**meta["vae_config"]) if "vae_config" in meta else None
    report = plan_denoise(topology, settings.batch_size, settings.process_size, unet_config=unet_config,
                          vae_config=vae_config, settings=settings,
                          config_name=str(args.weights) if args.weights else "sd15")
    print(json.dumps(report.as_json()), flush=True)
    if not report.fits:
        _explain(report)
        return EXIT_DOES_NOT_FIT
    return 0

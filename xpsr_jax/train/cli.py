"""``xpsr-jax train``: parse the config (ml_collections, ``--config.key=value`` overrides), join the other hosts,
and call :func:`xpsr_jax.train.loop.train_and_evaluate`."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from xpsr_jax.args import add_overwrite, nonnegative_int, positive_int
from xpsr_jax.paths import as_path, run_path
from xpsr_jax.train.plan_cli import PLAN_HELP, add_plan_arguments, check_plan_arguments, run_plan

TRAIN_DESCRIPTION = """\
Train XPSR's ControlNet and pixel attentions on make-data records (or synthetic data), sharded over the mesh the
config names. Writes WORKDIR/checkpoints/<step>/ (state, each process's data-iterator state, config),
WORKDIR/metrics.jsonl and TensorBoard events. Rerunning the same command resumes from the latest checkpoint with
the losses of an uninterrupted run; SIGTERM saves and exits; a non-finite loss stops the run naming the step.
Override any config value with --config.KEY=VALUE (Python literals; a misspelt key is an error)."""

EXAMPLES = """examples:
  xpsr-jax train --config xpsr_sd15 --workdir runs/xpsr --config.init_from=weights/xpsr-init \\
      --config.data.path=data/train
  xpsr-jax train --config tiny --workdir runs/tiny --config.num_train_steps=20
  xpsr-jax train --config ablation_sequential --workdir runs/seq --config.mesh.shape='(("data",-1),("fsdp",8))'
multi-host: every host runs the same command; the coordinator comes from --coordinator/--num-processes/
--process-id or from the environment (TPU pods and SLURM are detected by jax.distributed.initialize).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train XPSR (sharded, resumable)", description=TRAIN_DESCRIPTION, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True,
                   help="a bundled config's name (xpsr_sd15, tiny, ablation_*) or a config file")
    p.add_argument("--workdir", type=run_path,
                   help="checkpoints, TensorBoard events, metrics.jsonl (a local folder or gs://bucket/path); required "
                        "unless --compile-only")
    p.add_argument("--coordinator", help="host:port of process 0 (multi-host without auto-detection)")
    p.add_argument("--num-processes", type=positive_int)
    p.add_argument("--process-id", type=nonnegative_int)
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() with auto-detection (TPU pods, SLURM)")
    add_plan_arguments(p)
    p.epilog = EXAMPLES + PLAN_HELP
    p.set_defaults(func=run)

    e = sub.add_parser("export", help="a training run's checkpoint -> a Flax checkpoint for sr / convert to-torch",
                       description="Write the weights of a training run (latest step, or --step) as a Flax "
                                   "checkpoint folder; add --torch DIR to also write the official PyTorch layout.",
                       epilog="example:\n  xpsr-jax export runs/xpsr weights/xpsr-trained --torch weights/xpsr-torch",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("workdir", type=run_path)
    e.add_argument("out", type=run_path)
    e.add_argument("--step", type=nonnegative_int)
    e.add_argument("--torch", type=run_path, help="also write OUT/{unet,controlnet} for PyTorch")
    add_overwrite(e)
    e.set_defaults(func=run_export)




def load_config(path: str, overrides: list[str]):
    """The config's ``get_config()`` with ``--config.a.b=value`` overrides applied (values are Python literals,
    else strings); the config is locked, so a misspelt key is an error, not a new field. ``path`` is a config file
    or the name of a bundled one (``xpsr_jax.configs``: xpsr_sd15, tiny, ablation_*)."""
    import ast
    import importlib.util

    from xpsr_jax.configs import resolve

    try:
        config_path = resolve(path)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    # a config of one's own may import a sibling file of its folder
    sys.path.insert(0, str(config_path.parent))
    spec = importlib.util.spec_from_file_location(f"xpsr_config_{config_path.stem}", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.lock()
    for item in overrides:
        key, sep, raw = item[len("--config."):].partition("=")
        if not sep:
            raise SystemExit(f"override {item!r} needs a value: --config.{key}=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        node = config
        *parents, leaf = key.split(".")
        try:
            for part in parents:
                node = node[part]
            node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], tuple) else value
        except (KeyError, AttributeError) as e:
            raise SystemExit(f"bad override {item!r}: the config has no key {key!r}") from e
        except TypeError as e:
            raise SystemExit(f"bad override {item!r}: {e}") from e
    return config


def initialize_distributed(args) -> None:
    import jax

    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.distributed:
        jax.distributed.initialize()


def check_config(config) -> None:
    """What a run needs, checked before any setup (distributed init, model building, compiling): positive step
    and batch counts, an existing ``init_from`` checkpoint, and a ``data.path`` that is a finished make-data
    output holding at least one pair. Raises UsageError naming the key and the value."""
    from xpsr_jax.errors import UsageError

    for key in ("num_train_steps", "global_batch_size"):
        value = config.get(key)
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise UsageError(f"config.{key}={value!r}: must be a positive integer")
    for key, value in _float_leaves(config.to_dict()):
        if not math.isfinite(value):  # a NaN learning rate or loss weight would only show as a NaN loss later
            raise UsageError(f"config.{key}={value!r}: must be a finite number")
    prob = config.data.get("hr_condition_prob")
    if prob is not None and not 0 <= prob <= 1:
        raise UsageError(f"config.data.hr_condition_prob={prob!r}: must be a probability in [0, 1]")
    if config.init_from and not (as_path(config.init_from) / "xpsr.json").is_file():
        raise UsageError(f"config.init_from={config.init_from!r}: not a Flax checkpoint folder (no xpsr.json; "
                         "write one with xpsr-jax convert)")
    if config.data.source == "records":
        _check_records(config.data.path)
    from xpsr_jax.data.cache_check import check_run_config

    check_run_config(config)  # cached encoder outputs the config asks for are in the data (each refusal names it)


def _float_leaves(tree: dict, prefix: str = ""):
    """(dotted key, value) of every float in a nested config dict."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _float_leaves(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            yield f"{prefix}{key}", value


def _check_records(path: str) -> None:
    from xpsr_jax.data import records
    from xpsr_jax.errors import UsageError

    where = f"config.data.path={path!r}"
    if not path:
        raise UsageError(f"{where}: give the make-data output to train on (or config.data.source='synthetic')")
    if not as_path(path).exists():
        raise UsageError(f"{where}: no such folder")
    try:
        shards = records.list_shards(path)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"{where}: not a finished make-data output ({e})") from None
    if sum(records.count_records(s) for s in shards) == 0:
        raise UsageError(f"{where}: the make-data output holds 0 pairs (every image was skipped?)")


def run(args) -> int:
    check_plan_arguments(args)
    if not args.compile_only and args.workdir is None:
        from xpsr_jax.errors import UsageError

        raise UsageError("--workdir is required (unless --compile-only)")
    try:
        config = load_config(args.config, getattr(args, "config_overrides", []))
    except SystemExit as e:
        if isinstance(e.code, str):  # an unknown config or a bad override: one line, like every usage error
            from xpsr_jax.errors import UsageError

            raise UsageError(e.code) from None
        raise
    if args.compile_only:  # plans a TPU slice: no data, no checkpoint, no other hosts
        return run_plan(args, config)
    try:
        for key, value in (("data.path", config.data.path), ("init_from", config.init_from)):
            if value:
                as_path(value, f"config.{key}")  # local or gs://; other URLs refused
    except ValueError as e:
        raise SystemExit(str(e)) from None
    check_config(config)  # before the other hosts are joined: a bad path fails in seconds, on every host
    initialize_distributed(args)
    from xpsr_jax.train.loop import train_and_evaluate

    summary = train_and_evaluate(config, args.workdir)
    print(f"steps {summary.start_step} -> {summary.end_step}; checkpoints in {args.workdir / 'checkpoints'}")
    return 0


def run_export(args) -> int:
    from xpsr_jax.outputs import folder_or_absent, refuse_existing, refuse_over_inputs, require_folder
    from xpsr_jax.train.export import export_run

    require_folder(args.workdir, "WORKDIR")
    refuse_over_inputs(args.out, [("WORKDIR", args.workdir)], "OUT", replaces_folder=True)
    folder_or_absent(args.out)
    refuse_existing([args.out], args.overwrite, "OUT")
    if args.torch:
        folder_or_absent(args.torch, "--torch")
        refuse_over_inputs(args.torch, [("WORKDIR", args.workdir), ("OUT", args.out)], "--torch",
                           replaces_folder=True)
        refuse_existing([args.torch / "unet", args.torch / "controlnet"], args.overwrite, "--torch")

    out = export_run(args.workdir, args.out, args.step, overwrite=args.overwrite)
    print(f"wrote {out}")
    if args.torch:
        from xpsr_jax.train.export import save_torch

        save_torch(out, args.torch)  # local or gs://
        print(f"wrote {args.torch / 'unet'} and {args.torch / 'controlnet'}")
    return 0

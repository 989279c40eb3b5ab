"""``xpsr-jax <command>``: one entry point; each area of the package registers its own subcommand.

Subcommand modules keep heavy imports (JAX, torch) inside their ``run`` functions, so ``--help`` is instant.

Errors a user can fix (:class:`xpsr_jax.errors.XPSRError` and its subclasses) end in one line,
``xpsr-jax <command>: error: <message>``, and exit 2 (usage: detected before any work) or 1 (a failure while
working); ``--traceback`` or ``XPSR_JAX_TRACEBACK=1`` shows the whole traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from xpsr_jax.errors import XPSRError
# models/ may import only nn/, so its config error cannot derive from XPSRError; it is a user's error all the same
from xpsr_jax.models.config import ConfigError as ModelConfigError
from xpsr_jax.paths import refuse_urls

# (module, what it adds); each module has add_parser(subparsers).
COMMANDS = (
    "xpsr_jax.weights.cli",  # convert
    "xpsr_jax.data.cli",  # make-data
    "xpsr_jax.data.export_pairs",  # export-pairs
    "xpsr_jax.captions.cli",  # caption
    "xpsr_jax.train.cli",  # train
    "xpsr_jax.infer.cli",  # sr
    "xpsr_jax.eval.cli",  # eval
    "xpsr_jax.demo",  # demo
    "xpsr_jax.study.cli",  # study run, study report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xpsr-jax",
        description="XPSR diffusion super-resolution in JAX: convert weights, build data, train, super-resolve, "
                    "evaluate.",
    )
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of an error (also: XPSR_JAX_TRACEBACK=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that area is not part of this build
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # accepted anywhere on the line, not only before the subcommand
    show_traceback = "--traceback" in argv or os.environ.get("XPSR_JAX_TRACEBACK", "") not in ("", "0")
    argv = [a for a in argv if a != "--traceback"]
    # ml_collections-style overrides (--config.key=value) are not argparse options; keep them aside
    overrides = [a for a in argv if a.startswith("--config.")]
    args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
    args.config_overrides = overrides
    try:
        refuse_urls(command_name(args), argv)  # gs:// only where supported; never a local folder called 'gs:'
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (XPSRError, ModelConfigError) as e:
        if show_traceback:
            raise
        print(f"xpsr-jax {command_name(args)}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except (PermissionError, IsADirectoryError, NotADirectoryError) as e:  # a path the user gave cannot be used
        if show_traceback:
            raise
        print(f"xpsr-jax {command_name(args)}: error: {e}", file=sys.stderr)
        return 1


def command_name(args: argparse.Namespace) -> str:
    """``sr``, ``convert to-torch``: the words a user typed to pick the subcommand."""
    return " ".join(str(w) for w in (args.command, getattr(args, "direction", None)) if w)


if __name__ == "__main__":
    sys.exit(main())

"""``xpsr-jax <command>``: one entry point; each area of the package registers its own subcommand.

Subcommand modules keep heavy imports (JAX, torch) inside their ``run`` functions, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, what it adds); each module has add_parser(subparsers).
COMMANDS = (
    "xpsr_jax.weights.cli",  # convert
    "xpsr_jax.data.cli",  # make-data
    "xpsr_jax.captions.cli",  # caption
    "xpsr_jax.train.cli",  # train
    "xpsr_jax.infer.cli",  # sr
    "xpsr_jax.eval.cli",  # eval
    "xpsr_jax.demo",  # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xpsr-jax",
        description="XPSR diffusion super-resolution in JAX: convert weights, build data, train, super-resolve, "
                    "evaluate.",
    )
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
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

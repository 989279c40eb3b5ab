"""argparse ``type=`` functions for numbers, and the ``--overwrite`` flag every writing command shares.

A value that cannot work is an argparse error, one line naming the flag and the value, exit status 2, before
anything slow runs::

    xpsr-jax sr: error: argument --guidance: 'nan' is not a finite number
"""

from __future__ import annotations

import argparse
import math

OVERWRITE_HELP = ("replace existing results at the output (never an input: an output that is or lies inside an "
                  "input is always refused)")


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """The one ``--overwrite`` flag, with the same wording on every command that writes results."""
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, steps)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (indices, borders, optional minimums)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0")
    return value


def finite_float(text: str) -> float:
    """Any finite number (nan and inf refused)."""
    return _float(text)


def positive_float(text: str) -> float:
    """A finite number > 0 (scales, budgets)."""
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number > 0")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number >= 0")
    return value


def probability(text: str) -> float:
    """A number in [0, 1]."""
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1]")
    return value


def int_in(low: int, high: int):
    """An integer in [low, high] (e.g. a diffusion timestep in [0, 999])."""

    def parse(text: str) -> int:
        value = _int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} must be in [{low}, {high}]")
        return value

    parse.__name__ = f"int_in_{low}_{high}"
    return parse

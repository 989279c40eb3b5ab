"""The base of the errors a user can cause and fix, and how the command line reports them.

Every error type of the project that a user can meet (weights, checkpoints, images, configs, settings, paths,
outputs that would be overwritten) derives from :class:`XPSRError` as well as from the built-in type it always
had (``WeightFileError`` is still an ``OSError``), so ``except OSError`` keeps working. ``xpsr-jax`` catches
``XPSRError`` once, in :func:`xpsr_jax.cli.main`, and prints ``xpsr-jax <command>: error: <message>``. The one
exception is ``xpsr_jax.models.config.ConfigError``: ``models/`` imports nothing outside ``nn/``, so ``main`` names
it beside ``XPSRError``.

Exit codes: 2 for a :class:`UsageError` (the command line asks for something that cannot work: a missing input, an
output that would overwrite an input or existing results, a value out of range; found before any slow work, like
argparse's own errors), 1 for every other failure (a corrupt file found while working, a run that produced
nothing).
"""

from __future__ import annotations


class XPSRError(Exception):
    """An error with a message meant for the user; ``exit_code`` is what ``xpsr-jax`` exits with."""

    exit_code = 1


class UsageError(XPSRError):
    """The command line asks for something that cannot work; found before any slow work."""

    exit_code = 2


class OutputExistsError(UsageError, FileExistsError):
    """An output would replace existing files (without ``--overwrite``) or an input (always refused)."""


class InputNotFoundError(UsageError, FileNotFoundError):
    """An input file or folder named on the command line is missing or of the wrong kind."""


class NothingDoneError(XPSRError):
    """The whole input yielded nothing (no images, every file skipped, 0 pairs): not a success."""


class TextDecodeError(XPSRError, ValueError):
    """A text input (prompt file, caption store) is not valid UTF-8; the message names the file."""

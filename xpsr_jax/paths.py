"""Command-line paths are local (or mounted) files: a URL such as ``gs://bucket/run`` is refused by name.

``pathlib.Path("gs://bucket/run")`` silently becomes the local folder ``gs:/bucket/run``, so a run pointed at a
bucket would write to the machine's disk and vanish with it. Until the entry points read and write through a
filesystem layer, mount the bucket (gcsfuse, a shared filesystem) and pass the mount point.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def check_local(value: str, what: str) -> str:
    """``value`` unchanged, or ValueError naming ``what`` when it is a URL."""
    m = _URL.match(str(value))
    if m:
        raise ValueError(f"{what} {value!r}: {m.group(1)}:// URLs are not supported; mount the bucket (e.g. with "
                         "gcsfuse) and give the mounted path")
    return value


def local_path(value: str) -> Path:
    """argparse ``type=`` for a path argument: a Path, or an argparse error for a URL."""
    try:
        return Path(check_local(value, "path"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None

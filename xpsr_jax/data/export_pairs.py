"""Write the pairs of a make-data output as image folders ``OUT/LR/`` and ``OUT/HR/`` (PNG, as stored).

For what reads folders: ``sr`` and ``eval`` on a validation set built by make-data, or a caption run by another
tool. File names are the record's image id (``sub/0001.png``); with several degraded copies of an image the copy
number is added (``sub/0001#3.png``, the key ``make-data --captions`` tries first), so no copy overwrites another.
Rerunning skips files that already hold the same bytes; a file with other bytes is refused (before anything is
written) unless ``overwrite``. Each PNG appears atomically. A make-data output with no pairs is an error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xpsr_jax.args import add_overwrite

HELP = "write a make-data output's pairs as PNG folders OUT/LR and OUT/HR"

EPILOG = """\
example:
  xpsr-jax make-data data/DIV2K_valid_HR data/val --seed 1 --lr-size 128
  xpsr-jax export-pairs data/val data/val_png   # -> data/val_png/{LR,HR}/

exit status: 0 when every pair was exported; 1 when RECORDS is missing, unfinished, holds no pairs or has no LR
images (--hr-only); 2 for bad arguments, an OUT inside RECORDS, or files in OUT with other bytes (--overwrite).
"""


def export_pairs(records: str | os.PathLike, out: str | os.PathLike, *, per_copy_ids: bool | None = None,
                 progress: bool = False, overwrite: bool = False) -> int:
    """Export every pair; returns how many. ``per_copy_ids`` None: add ``#copy`` when any record's copy is > 0.

    Two passes: the first reads every record and refuses (OutputExistsError) when a file to be written exists
    with other bytes and ``overwrite`` is False, or when a record has no LR image, so a refusal writes nothing.
    """
    from tqdm import tqdm

    from xpsr_jax.data.pipeline import records_source
    from xpsr_jax.errors import NothingDoneError
    from xpsr_jax.files import atomic_write_bytes
    from xpsr_jax.outputs import refuse_existing

    source, out = records_source(records), Path(out)
    if len(source) == 0:
        raise NothingDoneError(f"{records} holds no pairs; nothing to export")
    if per_copy_ids is None:
        per_copy_ids = _has_copies(records)
    changed = [path for path, data in _files(source, records, out, per_copy_ids) if _differs(path, data)]
    refuse_existing([p for p in changed if p.exists()], overwrite, "OUT")
    for path, data in tqdm(_files(source, records, out, per_copy_ids), total=2 * len(source), unit="file",
                           desc="export", disable=not progress):
        if _differs(path, data):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)  # already PNG bytes; a killed export leaves no half image
    return len(source)


def _files(source, records, out: Path, per_copy_ids: bool):
    """(path, PNG bytes) of every file to export, record by record."""
    from xpsr_jax.data.caption_lookup import pair_key
    from xpsr_jax.data.records import parse

    for k in range(len(source)):
        rec = parse(source[k])
        if not len(rec["lr"]):
            raise ValueError(f"{records}: record {k} ({rec['id']!r}) has no LR image (made with make-data "
                             "--hr-only); there is no pair to export")
        name = pair_key(rec["id"], rec["epoch"]) if per_copy_ids else rec["id"]
        for side in ("lr", "hr"):
            yield out / side.upper() / f"{name}.png", rec[side]


def _differs(path: Path, data: bytes) -> bool:
    return not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data)


def _has_copies(records) -> bool:
    """Whether the output holds several copies of an image (its plan.json says how many epochs)."""
    import json

    from xpsr_jax.data.records import records_dir

    folder = records_dir(records)
    plan = (folder.parent if folder.name == "records" else folder) / "plan.json"
    return not plan.is_file() or json.loads(plan.read_text()).get("epochs", 1) > 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export-pairs", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=EPILOG)
    p.add_argument("records", metavar="RECORDS", help="make-data output folder (or its records/ folder)")
    p.add_argument("out", metavar="OUT", help="output folder; LR/ and HR/ are created in it")
    ids = p.add_mutually_exclusive_group()
    ids.add_argument("--per-copy-ids", dest="per_copy_ids", action="store_true", default=None,
                     help="name files ID#COPY (default: when the output has several copies per image)")
    ids.add_argument("--plain-ids", dest="per_copy_ids", action="store_false", help="name files ID")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_overwrite(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from xpsr_jax.errors import XPSRError
    from xpsr_jax.outputs import folder_or_absent, refuse_over_inputs

    try:
        folder_or_absent(args.out)
        refuse_over_inputs(Path(args.out) / "LR", [("RECORDS", args.records)], "OUT")
        refuse_over_inputs(Path(args.out) / "HR", [("RECORDS", args.records)], "OUT")
        n = export_pairs(args.records, args.out, per_copy_ids=args.per_copy_ids, progress=args.progress,
                         overwrite=args.overwrite)
    except XPSRError:
        raise  # reported by xpsr_jax.cli.main with its own exit code
    except (ValueError, FileNotFoundError) as exc:
        print(f"xpsr-jax export-pairs: error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {n} pairs to {Path(args.out) / 'LR'} and {Path(args.out) / 'HR'}")
    return 0

"""Write the pairs of a make-data output as image folders ``OUT/LR/`` and ``OUT/HR/`` (PNG, as stored).

For what reads folders: ``sr`` and ``eval`` on a validation set built by make-data, or a caption run by another
tool. File names are the record's image id (``sub/0001.png``); with several degraded copies of an image the copy
number is added (``sub/0001#3.png``, the key ``make-data --captions`` tries first), so no copy overwrites another.
Rerunning skips files that already exist with the same bytes' length.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "write a make-data output's pairs as PNG folders OUT/LR and OUT/HR"


def export_pairs(records: str | os.PathLike, out: str | os.PathLike, *, per_copy_ids: bool | None = None,
                 progress: bool = False) -> int:
    """Export every pair; returns how many. ``per_copy_ids`` None: add ``#copy`` when any record's copy is > 0."""
    from tqdm import tqdm

    from xpsr_jax.data.caption_lookup import pair_key
    from xpsr_jax.data.pipeline import records_source
    from xpsr_jax.data.records import parse

    source, out = records_source(records), Path(out)
    if per_copy_ids is None:
        per_copy_ids = _has_copies(records)
    written = 0
    for k in tqdm(range(len(source)), unit="pair", desc="export", disable=not progress):
        rec = parse(source[k])
        if not len(rec["lr"]):
            raise ValueError(f"{records}: record {k} ({rec['id']!r}) has no LR image (made with make-data "
                             "--hr-only); there is no pair to export")
        name = pair_key(rec["id"], rec["epoch"]) if per_copy_ids else rec["id"]
        for side in ("lr", "hr"):
            path = out / side.upper() / f"{name}.png"
            if path.is_file() and path.stat().st_size == len(rec[side]):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(rec[side])  # already PNG bytes
            os.replace(tmp, path)  # a killed export never leaves a half-written image behind
        written += 1
    return written


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
                              epilog="example:\n  xpsr-jax make-data data/DIV2K_valid_HR data/val --seed 1 --lr-size 128\n"
                                     "  xpsr-jax export-pairs data/val data/val_png   # -> data/val_png/{LR,HR}/")
    p.add_argument("records", metavar="RECORDS", help="make-data output folder (or its records/ folder)")
    p.add_argument("out", metavar="OUT", help="output folder; LR/ and HR/ are created in it")
    ids = p.add_mutually_exclusive_group()
    ids.add_argument("--per-copy-ids", dest="per_copy_ids", action="store_true", default=None,
                     help="name files ID#COPY (default: when the output has several copies per image)")
    ids.add_argument("--plain-ids", dest="per_copy_ids", action="store_false", help="name files ID")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        n = export_pairs(args.records, args.out, per_copy_ids=args.per_copy_ids, progress=args.progress)
    except (ValueError, FileNotFoundError) as exc:
        print(f"xpsr-jax export-pairs: error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {n} pairs to {Path(args.out) / 'LR'} and {Path(args.out) / 'HR'}")
    return 0

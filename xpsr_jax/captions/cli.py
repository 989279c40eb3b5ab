"""The ``xpsr-jax caption`` subcommand: the offline MLLM pass that writes XPSR's prompts into a caption store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xpsr_jax import paths
from xpsr_jax.args import add_overwrite, nonnegative_int, positive_int

HELP = "offline MLLM captions (high-level content, low-level quality) of an image folder or make-data pairs"

USAGE = """\
xpsr-jax caption IMAGES OUT [--hr-dir HR] [--model ID] [--lowlevel-model ID] [--batch-size N]
                            [--num-shards N --shard-index I] [--dtype D] [--max-length 200] [--merge]
       xpsr-jax caption --merge OUT
       xpsr-jax caption --import-official DIR OUT
       xpsr-jax caption --import-sidecar DIR OUT [--sidecar-field FIELD]"""

DESCRIPTION = """\
Ask a LLaVA model XPSR's two questions about every image under IMAGES (recursively) and append the answers
to the JSONL caption store OUT, one record per image id (the file stem relative to IMAGES, e.g. sub/0001):
  {"id", "highlevel", "lowlevel", "highlevel_hr", "lowlevel_hr"}
The _hr fields come from the image with the same id under --hr-dir. The settings of every run (models,
prompts, dtype, generation configs) are added to OUT.meta.json.

IMAGES may also be a make-data output (the folder holding records/): then every record's degraded LR and
its HR crop are captioned under the key ID#COPY, the key `make-data --captions` joins on first. This is the
official order (degrade, caption the degraded copies, build the dataset with their prompts), with no image
folders written in between.

High level: llava-hf/llava-1.5-7b-hf with XPSR's exact prompt, max_length 200 counted as transformers 4.36
counted it (<image> as one token), the model's own decoding (greedy). Low level: XPSR used Q-Instruct
InternLM-XComposer, which cannot run through transformers' LLaVA classes; by default the same LLaVA model is
asked XPSR's quality instruction in a LLaVA prompt (recorded as a deviation). --lowlevel-model picks another
LLaVA-architecture model. Models are hub ids (when online) or local folders.

Resumable: ids that already have a record (whatever its fields) are skipped, so rerun after a crash.
Split work across processes or hosts with --num-shards/--shard-index: shard I writes OUT with a -shard-I-of-N suffix; opening OUT as a
caption store (this command does) also reads its shard files, and --merge folds them into OUT once all are done.
Unreadable images are listed at the end and make the exit status 1; the others are captioned regardless.

OUT may be a Cloud Storage object, gs://bucket/captions.jsonl (IMAGES, --hr-dir and the import folders stay
local): the records go to a local copy of the file this process writes, uploaded whole every 60 s and at the
end (OUT.meta.json after it), since GCS objects cannot be appended to. Shards each upload their own object, so
hosts share one bucket; --merge and the imports read and write the bucket too.
"""

EPILOG = """\
examples:
  xpsr-jax caption data/DIV2K/LR captions.jsonl --hr-dir data/DIV2K/HR
  # the degraded copies of a make-data run (no captions yet), then the dataset with their prompts:
  xpsr-jax caption data/degraded captions.jsonl --model /models/llava-1.5-7b-hf
  xpsr-jax make-data data/HR data/train --captions captions.jsonl   # same settings as data/degraded
  xpsr-jax caption images/ captions.jsonl --model /models/llava-1.5-7b-hf --batch-size 16 --dtype bfloat16
  # 4 hosts, then merge:
  xpsr-jax caption images/ captions.jsonl --num-shards 4 --shard-index $HOST_INDEX
  xpsr-jax caption --merge captions.jsonl
  # the same in a bucket (application-default credentials):
  xpsr-jax caption images/ gs://bucket/captions.jsonl --num-shards 4 --shard-index $HOST_INDEX
  xpsr-jax caption --merge gs://bucket/captions.jsonl
  # reuse the official prompt folders (highlevel_prompt/, lowlevel_prompt_q/, *_GT/):
  xpsr-jax caption --import-official testset/RealSR_CenterCrop realsr_captions.jsonl

existing files: captioning only appends records for ids that have none (resume); an import that would replace
records OUT already holds is refused unless --overwrite; OUT may not be a folder, an input, or lie inside an
input folder. A line cut short by a crash at the end of OUT is dropped when OUT is next opened. A gs:// OUT
is uploaded every 60 s: a crash loses the records added since the last upload, and a rerun captions them again.

exit status: 0 when every image owned by this shard has captions; 1 when some image could not be read or
paired (listed on stderr), or when there was nothing to caption or import; 2 for bad arguments, missing
folders, a refused OUT or a model that cannot be loaded.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``caption`` on an argparse subparsers object; the parsed args carry ``func=run``."""
    from .llava import DEFAULT_MAX_LENGTH, DEFAULT_MODEL, DTYPES
    from .store import FIELDS

    p = subparsers.add_parser("caption", help=HELP, usage=USAGE, description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="?", metavar="IMAGES",
                   help="folder of images (searched recursively), or a make-data output folder")
    p.add_argument("out", nargs="?", metavar="OUT", help="caption store, a .jsonl file (local or gs://)")
    p.add_argument("--hr-dir", metavar="HR", help="folder of the paired HR images (same ids); fills the _hr fields")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="ID",
                   help="LLaVA model for the high-level pass: hub id or local folder (default: %(default)s)")
    p.add_argument("--lowlevel-model", metavar="ID",
                   help="LLaVA-architecture model for the low-level pass (default: the --model one)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="images per generate call; with --hr-dir each pair counts once and is run as LR+HR "
                        "(default: %(default)s)")
    p.add_argument("--num-shards", type=positive_int, default=1, metavar="N", help="split the ids into N shards")
    p.add_argument("--shard-index", type=nonnegative_int, default=0, metavar="I",
                   help="the shard this process captions")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="model dtype; auto = float16 on GPU (as XPSR), float32 on CPU (default: auto)")
    p.add_argument("--device", help="torch device, e.g. cuda:1 (default: cuda when available, else cpu)")
    p.add_argument("--max-length", type=positive_int, default=DEFAULT_MAX_LENGTH, metavar="L",
                   help="prompt + reply tokens, <image> counted once (default: %(default)s)")
    p.add_argument("--merge", action="store_true",
                   help="fold OUT's shard files into OUT (after captioning, when IMAGES is given)")
    p.add_argument("--import-official", metavar="DIR",
                   help="import DIR/highlevel_prompt[_GT]/ and DIR/lowlevel_prompt_q[_GT]/ text files into OUT")
    p.add_argument("--import-sidecar", metavar="DIR", help="import NAME.txt files under DIR into OUT")
    p.add_argument("--sidecar-field", choices=FIELDS, default="highlevel",
                   help="field the sidecar texts fill (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite(p)
    p.set_defaults(func=run)
    return p


def _error(message: str) -> int:
    print(f"xpsr-jax caption: error: {message}", file=sys.stderr)
    return 2


def _single_out(args) -> str | None:
    """Import and merge-only modes take one positional, OUT."""
    return args.images if args.out is None else None


def run(args: argparse.Namespace) -> int:
    """Run ``caption`` for parsed arguments; returns the exit status."""
    _check_schemes(args)
    imports = [m for m in (args.import_official, args.import_sidecar) if m]
    if len(imports) > 1:
        return _error("give one of --import-official and --import-sidecar")
    if imports:
        return _run_import(args, Path(imports[0]))
    if args.merge and args.out is None:
        out = _single_out(args)
        if out is None:
            return _error("--merge needs OUT")
        return _run_merge(paths.as_path(out, "OUT"))
    if args.images is None or args.out is None:
        return _error("IMAGES and OUT are required (see --help)")
    if args.merge and args.num_shards > 1:
        # merging removes the shard files, which the other shards may still be appending to
        return _error("with --num-shards, run --merge OUT on its own once every shard has finished")
    status = _run_caption(args)
    if status == 2 or not args.merge:
        return status
    return max(status, _run_merge(paths.as_path(args.out, "OUT")))


def _check_schemes(args) -> None:
    """Before any work: inputs are read from local files (or the hub, for models); only OUT may be a URL, and
    then only gs://."""
    single = args.out is None  # import and merge modes: the one positional is OUT
    inputs = {"IMAGES": None if single else args.images, "--hr-dir": args.hr_dir,
              "--import-official": args.import_official, "--import-sidecar": args.import_sidecar,
              "--model": args.model, "--lowlevel-model": args.lowlevel_model}
    for label, value in inputs.items():
        if value is not None:
            paths.check_local(value, label)
    out = args.images if single else args.out
    if out is not None:
        paths.as_path(out, "OUT")


def _run_import(args, source: Path) -> int:
    from xpsr_jax.errors import NothingDoneError

    from .official import import_records, official_folders, read_official, read_sidecars

    out = _single_out(args)
    if out is None:
        return _error("an import takes DIR and OUT only")
    out = paths.as_path(out, "OUT")
    if not source.is_dir():
        return _error(f"not a folder: {source}")
    _check_out(out, [("DIR", source)])
    if args.import_official:
        if not official_folders(source):
            return _error(f"no highlevel_prompt*/lowlevel_prompt* folders in {source}")
        records = read_official(source)
    else:
        records = read_sidecars(source, args.sidecar_field)
    if not records:
        raise NothingDoneError(f"no prompt files (*.txt) found under {source}; nothing imported")
    _refuse_replacing(out, records, args.overwrite)
    count = import_records(out, records)  # a bucket store: one upload on close (and one a minute if it runs longer)
    print(f"imported {count} records from {source} into {out}")
    return 0


def _check_out(out: paths.AnyPath, inputs) -> None:
    """OUT (local or gs://) is a store file: not a folder, not an input, not inside an input folder."""
    from xpsr_jax.errors import OutputExistsError
    from xpsr_jax.outputs import refuse_over_inputs

    refuse_over_inputs(out, inputs)
    if out.is_dir():  # in a bucket: objects exist under OUT/
        raise OutputExistsError(f"OUT {out} is a folder; give the caption store's file name (a .jsonl)")
    if not _is_store(out):
        raise OutputExistsError(f"OUT {out} exists and is not a caption store (its first line is not a JSON record "
                                "with an 'id'); records are never appended to other files")


def _is_store(path: paths.AnyPath) -> bool:
    """Whether ``path`` is missing, empty, or starts with a caption record (appending to it is safe)."""
    import json

    if not path.is_file():
        return True
    with path.open("rb") as f:
        head = f.read(1 << 20)  # not readline(limit): bucket files (fsspec) take no limit
    first, _, more = head.partition(b"\n")
    if not first.strip():
        return not more
    try:
        record = json.loads(first)
    except ValueError:  # not JSON, not UTF-8, or a first line cut short by a crash: not a store to append to
        return False
    return isinstance(record, dict) and isinstance(record.get("id"), str)


def _refuse_replacing(out: paths.AnyPath, records: dict, overwrite: bool) -> None:
    """An import adds records and fields; replacing a field value OUT already holds needs --overwrite."""
    from xpsr_jax.errors import OutputExistsError

    from .store import CaptionStore

    if overwrite or not out.is_file():
        return
    held = CaptionStore.open(out)
    clash = sorted(rid for rid, rec in records.items() if rid in held
                   and any(k != "id" and k in held.get(rid) and held.get(rid)[k] != v for k, v in rec.items()))
    if clash:
        more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
        raise OutputExistsError(f"OUT {out} already holds records for {clash[0]!r}{more}; pass --overwrite to "
                                "replace them")


def _run_merge(out: paths.AnyPath) -> int:
    from .store import merge_shards, shard_paths

    shards = shard_paths(out)
    if not shards and not out.is_file():
        return _error(f"no caption store or shard files at {out}")
    _check_out(out, [])  # merging rewrites OUT: never a folder or a file that is not a caption store
    count = merge_shards(out)
    print(f"merged {len(shards)} shard files into {out} ({count} records)")
    return 0


def _run_caption(args) -> int:
    from xpsr_jax.errors import NothingDoneError

    from .images import list_images
    from .records import is_records_folder
    from .runner import CaptionJob, ModelLoadError, caption_folder

    if not Path(args.images).is_dir():
        return _error(f"IMAGES is not a folder: {args.images}")
    if args.hr_dir is not None and not Path(args.hr_dir).is_dir():
        return _error(f"--hr-dir is not a folder: {args.hr_dir}")
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        return _error(f"--shard-index must be in [0, {args.num_shards}) and --num-shards at least 1")
    if args.batch_size < 1 or args.max_length < 2:
        return _error("--batch-size must be at least 1 and --max-length at least 2")
    out = paths.as_path(args.out, "OUT")
    _check_out(out, [("IMAGES", args.images), ("--hr-dir", args.hr_dir)])
    if not is_records_folder(args.images):
        unique, duplicates = list_images(args.images)
        if not unique and not duplicates:  # before any model loads: nothing to caption is not a success
            raise NothingDoneError(f"no images (png, jpg, jpeg, bmp, webp, tif) under IMAGES {args.images}")
    job = CaptionJob(images=Path(args.images), out=out,
                     hr_dir=Path(args.hr_dir) if args.hr_dir else None, model=args.model,
                     lowlevel_model=args.lowlevel_model, batch_size=args.batch_size, num_shards=args.num_shards,
                     shard_index=args.shard_index, dtype=args.dtype, device=args.device,
                     max_length=args.max_length, progress=not args.no_progress)
    try:
        result = caption_folder(job)
    except ModelLoadError as exc:
        return _error(f"cannot load the model {exc}")
    except (ValueError, FileNotFoundError) as exc:  # records: unfinished output, --hr-only records, --hr-dir
        return _error(str(exc))
    print(f"captioned {result.captioned}, already done {result.already_done}, "
          f"problems {len(result.problems)} -> {result.written_to}")
    for rid, reason in result.problems:
        print(f"  {rid}: {reason}", file=sys.stderr)
    return 1 if result.problems else 0

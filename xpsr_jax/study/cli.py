"""``xpsr-jax study run SPEC --workdir W`` and ``xpsr-jax study report W``."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Reproduction studies from one spec file (configs/studies/*.py: rows = a training config + overrides, seeds,
test sets, metrics, the published numbers). `run` trains every row x seed (or reuses a finished run), exports it,
super-resolves the test sets and evaluates them; every stage is marked done in W/runs/<run>/state.json and skipped
when rerun, so a killed study resumes where it stopped. `report` writes W/report/study.md and index.html: mean ±
std over seeds, the published numbers beside them, each row's change against the baseline, training curves, and
every missing value with its reason."""

EXAMPLES = """examples:
  xpsr-jax study run configs/studies/ablations.py --workdir studies/ablations
  xpsr-jax study run configs/studies/ablations.py --workdir studies/ablations --only full-seed0   # one host, one run
  xpsr-jax study run configs/studies/ablations.py --workdir W --config.mesh.shape='(("data",-1),("fsdp",8))'
  xpsr-jax study report studies/ablations                      # -> studies/ablations/report/index.html
--config.KEY=VALUE overrides apply to every run, after the spec's own.
exit status: 0 when every selected run finished; 1 when some run failed (the others still ran); 2 for bad
arguments or a spec that cannot work (found before any training).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="reproduction studies: runs x seeds from one spec, one report",
                       description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = actions.add_parser("run", help="train, export, super-resolve and evaluate every run (resumable)",
                           description=DESCRIPTION, epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("spec", type=Path, help="a study spec file (get_spec() -> StudySpec)")
    r.add_argument("--workdir", type=Path, required=True, help="the study's folder (local)")
    r.add_argument("--only", action="append", default=[], metavar="RUN",
                   help="a run id (full-seed0) or a row name (full); repeat for several")
    r.set_defaults(func=run)
    rep = actions.add_parser("report", help="Markdown and HTML report of a study folder",
                             description=DESCRIPTION, epilog=EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("workdir", type=Path, help="the folder `study run` wrote")
    rep.add_argument("--out", type=Path, help="where to write the report (default WORKDIR/report)")
    rep.set_defaults(func=report)


def run(args) -> int:
    from xpsr_jax.study.runner import StudyRunner
    from xpsr_jax.study.spec import load_spec

    spec = load_spec(args.spec)
    runner = StudyRunner(spec, args.workdir, config_overrides=tuple(getattr(args, "config_overrides", [])))
    outcome = runner.run(tuple(args.only))
    failed = {k: v for k, v in outcome.items() if v != "done"}
    print(f"study {spec.name}: {len(outcome) - len(failed)} of {len(outcome)} run(s) finished; "
          f"`xpsr-jax study report {args.workdir}` writes the report")
    for run_id, why in failed.items():
        print(f"  {run_id} failed: {why}")
    return 1 if failed else 0


def report(args) -> int:
    from xpsr_jax.study.report import write_report

    paths = write_report(args.workdir, args.out)
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0

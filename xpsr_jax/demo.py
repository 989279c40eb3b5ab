"""``xpsr-jax demo``: the whole XPSR chain on bundled photos with a tiny model, offline, in a few minutes on a CPU.

photos -> degrade (make-data) -> caption (tiny random LLaVA) -> dataset (make-data with captions) -> train on an
8-device CPU mesh -> export (Flax + PyTorch) -> reload in PyTorch and compare one denoiser call -> super-resolve
held-out LR images x4 -> evaluate against their HR (reports + HTML page).

The models are tiny and random and train for a handful of steps: the outputs show that every piece runs and
connects to the next, not what XPSR can do. The stages live in :mod:`xpsr_jax.demo_stages`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

from xpsr_jax.args import positive_int

HELP = "run the whole chain on bundled photos with a tiny random model (offline, CPU, a few minutes)"

EPILOG = """\
order of the data stages, as in XPSR's own pipeline: the photos are degraded first (make-data), the LR images
and their HR crops are captioned straight from those records (the LR-derived low-level prompt describes the
degraded image), then the dataset is written again with the same seed, now with the prompts joined in
(make-data --captions).

examples:
  xpsr-jax demo                          # -> outputs/demo, 2-5 minutes on 2 CPU cores
  xpsr-jax demo --out /tmp/d --keep      # rerun, reusing the stages an earlier run finished
  xpsr-jax demo --steps 20 --sr-steps 20 # longer training, the paper's sampling step count
"""

DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
STATE_FILE = "demo.json"
CACHE_DIR = ".jax-cache"
HONESTY = ("The models are tiny (a 4-level UNet of 32-64 channels) with random weights, trained for a few "
           "steps; the LLaVA captioner is random too (its prompts are word salad). The pictures and numbers "
           "show that the chain runs end to end, not XPSR's quality: for that, train SD1.5-size weights "
           "(docs/reproduce.md).")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=HELP, description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=4, help="training steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops, degradations, models, sampling")
    p.add_argument("--keep", action="store_true",
                   help="reuse the stages an earlier run in --out finished with the same settings")
    small = p.add_argument_group("sizes (smaller = faster; the tests use the smallest)")
    small.add_argument("--crop-size", type=int, default=128,
                       help="training crop side, a multiple of 64; held-out HR crops are twice it (default: "
                            "%(default)s)")
    small.add_argument("--sr-steps", type=positive_int, default=4,
                       help="DDPM sampling steps (default: %(default)s; the paper uses 20)")
    small.add_argument("--process-size", type=int, default=128,
                       help="sampling raises the short side to this (default: %(default)s; the paper uses 512)")
    p.set_defaults(func=run)


def prepare_environment() -> list[str]:
    """8 CPU devices for the training mesh; must happen before JAX is imported. Returns notes to print."""
    notes = []
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DEVICE_FLAG}".strip()
    if "jax" in sys.modules:
        notes.append("JAX was imported before the demo started: the device count cannot be changed now")
    # the demo is sized for a CPU; on a GPU host set JAX_PLATFORMS yourself to use the GPU
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from xpsr_jax.demo_stages import quiet_environment

    quiet_environment()
    return notes


class Stage:
    """One step of the chain: ``owns`` are the paths it writes (shown, and deleted before it reruns); ``uses``
    the settings its result depends on (with --keep, a change reruns it and everything after it)."""

    def __init__(self, name: str, what: str, fn, owns: list[Path], uses: tuple[str, ...] = ()):
        self.name, self.what, self.fn, self.owns, self.uses = name, what, fn, owns, uses


def stages(p, s) -> list[Stage]:
    from xpsr_jax import demo_stages as D

    data = ("seed", "crop_size", "epochs")
    return [
        Stage("photos", "bundled photos, 4 for training, 2 held out", D.stage_photos,
              [p.photos_train, p.photos_test]),
        Stage("degrade", "Real-ESRGAN degradation of XPSR's data (make-data)", D.stage_degrade,
              [p.degraded_train, p.degraded_test, p.pairs_test], data),
        Stage("caption", "high- and low-level prompts of LR and HR images with a tiny random LLaVA",
              D.stage_caption, [p.llava, p.captions_train, p.captions_test], data),
        Stage("dataset", "the captioned training set (make-data --captions)", D.stage_dataset, [p.dataset], data),
        Stage("train", f"{s.steps} training steps on the CPU mesh", D.stage_train, [p.run], ("steps",)),
        Stage("export", "the run -> a Flax checkpoint and the official PyTorch layout", D.stage_export,
              [p.flax, p.torch]),
        Stage("pytorch", "reload the export in PyTorch, one denoiser call against JAX", D.stage_pytorch,
              [p.torch_check]),
        Stage("sr", f"super-resolve the held-out LR images x4 ({s.sr_steps} DDPM steps)", D.stage_sr, [p.sr],
              ("sr_steps", "process_size")),
        Stage("eval", "PSNR / SSIM / LPIPS against the held-out HR, reports and HTML", D.stage_eval,
              [p.bicubic, p.report]),
    ]


def _load_state(out: Path) -> dict:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _clear(out: Path, owned) -> bool:
    """Start afresh, deleting only what a demo run writes, so a wrong --out never loses other files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / STATE_FILE).is_file():
        return False
    _remove([out / name for name in (*owned, STATE_FILE)])
    return True


def _validate(args) -> str | None:
    if args.steps < 1:
        return "--steps must be at least 1"
    if args.crop_size < 64 or args.crop_size % 64:
        return "--crop-size must be a multiple of 64 (a latent side divisible by 8)"
    if args.sr_steps < 1:
        return "--sr-steps must be at least 1"
    if args.process_size < 64 or args.process_size % 8:
        return "--process-size must be a multiple of 8, at least 64"
    return None


def run(args) -> int:
    t_start = time.perf_counter()
    notes = prepare_environment()  # before anything imports JAX
    problem = _validate(args)
    if problem:
        print(f"xpsr-jax demo: error: {problem}", file=sys.stderr)
        return 2
    from xpsr_jax import demo_stages as D

    out = args.out
    p = D.DemoPaths(out)
    s = D.DemoSettings(steps=args.steps, seed=args.seed, crop_size=args.crop_size, sr_steps=args.sr_steps,
                       process_size=args.process_size)
    settings = dataclasses.asdict(s)
    previous = _load_state(out).get("stages", {}) if args.keep else {}
    if not args.keep and not _clear(out, D.DemoPaths.OWNED):
        print(f"xpsr-jax demo: error: {out} holds files the demo did not write; choose another --out",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    _compilation_cache(out / CACHE_DIR)
    plan = stages(p, s)
    reuse = _reusable(plan, previous, settings)
    state = {"settings": settings, "stages": {k: v for k, v in previous.items() if k in reuse}}
    _write_state(out, state, 0.0)  # marks the folder as the demo's from the start

    print(f"xpsr-jax demo -> {_rel(out)}")
    print(textwrap.fill(HONESTY, 110, initial_indent="  ", subsequent_indent="  "))
    for n in notes:
        print("  note: " + n)
    prep = None
    if "train" not in reuse:
        prep = D.TrainerPrep(p, s)  # the train step compiles in the background while the data is prepared
    for k, st in enumerate(plan, 1):
        tag = f"[{k}/{len(plan)}] {st.name}"
        where = ", ".join(_rel(o) for o in st.owns)
        if st.name in reuse:
            print(f"{tag}: reused ({state['stages'][st.name]['result']}) -> {where}")
            continue
        _remove(st.owns)  # a rerun starts clean: make-data refuses other settings, training would resume
        print(f"{tag}: {st.what} ...", flush=True)
        t0 = time.perf_counter()
        try:
            result = st.fn(p, s, prep) if st.name == "train" else st.fn(p, s)
        except Exception as e:  # noqa: BLE001 - name the stage; what earlier stages wrote stays for --keep
            print(f"{tag}: failed after {time.perf_counter() - t0:.1f} s: {type(e).__name__}: {e}", file=sys.stderr)
            _write_state(out, state, time.perf_counter() - t_start)
            raise
        seconds = time.perf_counter() - t0
        state["stages"][st.name] = {"seconds": round(seconds, 2), "result": result,
                                    "outputs": [str(o) for o in st.owns], "settings": settings}
        _write_state(out, state, time.perf_counter() - t_start)
        print(f"{tag}: done in {seconds:.1f} s: {result} -> {where}", flush=True)

    total = time.perf_counter() - t_start
    _write_state(out, state, total)
    _summary(p, total)
    return 0


def _compilation_cache(folder: Path) -> None:
    """Keep compiled XLA programs on disk: a second demo run (or a --keep rerun with other settings) skips most
    of the minutes of compiling. The folder survives reruns; delete it freely. A cache the environment already
    names (``JAX_COMPILATION_CACHE_DIR``, e.g. the test run's, shared by all its processes) is kept."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    jax.config.update("jax_compilation_cache_dir", str(folder.resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _reusable(plan: list[Stage], previous: dict, settings: dict) -> set[str]:
    """Stages an earlier run finished with the same settings and whose outputs are still there; only an
    unbroken prefix counts, since every stage reads what the ones before it wrote."""
    reuse = set()
    for st in plan:
        rec = previous.get(st.name)
        if not (rec and all(rec["settings"].get(k) == settings[k] for k in st.uses)
                and all(o.exists() for o in st.owns)):
            break
        reuse.add(st.name)
    return reuse


def _remove(paths) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _write_state(out: Path, state: dict, seconds: float) -> None:
    state = dict(state, total_seconds=round(seconds, 2), note=HONESTY)
    from xpsr_jax.files import atomic_write_json

    atomic_write_json(out / STATE_FILE, state)


def _summary(p, total: float) -> None:
    rows = [
        ("photos", f"{_rel(p.photos_train)}/, {_rel(p.photos_test)}/"),
        ("degraded pairs", f"records: {_rel(p.degraded_train.parent)}/, held-out PNG: "
                           f"{_rel(p.pairs_test)}/{{LR,HR}}/"),
        ("tiny LLaVA", _rel(p.llava)),
        ("caption stores", f"{_rel(p.captions_train)}, {_rel(p.captions_test)}"),
        ("training set", f"{_rel(p.dataset)}/records/"),
        ("training run", f"{_rel(p.run)}/ (checkpoints/, metrics.jsonl, tensorboard/)"),
        ("Flax weights", _rel(p.flax)),
        ("PyTorch weights", f"{_rel(p.torch)}/{{unet,controlnet}}/"),
        ("PyTorch check", _rel(p.torch_check)),
        ("super-resolved", f"{_rel(p.sr)}/ (PNG + JSON with settings and prompts); bicubic: {_rel(p.bicubic)}/"),
        ("report", f"{_rel(p.report)}/index.html, results.md, results.csv, results.json"),
        ("stage times", _rel(p.root / STATE_FILE)),
        ("compile cache", f"{_rel(Path(os.environ.get('JAX_COMPILATION_CACHE_DIR') or p.root / CACHE_DIR))}/ "
                          "(a second run compiles less; safe to delete)"),
    ]
    print(f"\ndemo finished in {total:.0f} s. Outputs:")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print("Reminder: tiny random models and a few training steps - the report shows that the chain works, "
          "not XPSR's quality.")

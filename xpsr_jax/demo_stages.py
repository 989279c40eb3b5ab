"""The stages of ``xpsr-jax demo``, one function each: what they read and write is in ``DemoPaths``.

Each stage calls the same Python functions as the matching ``xpsr-jax`` subcommand (noted per stage) and returns
a short description of what it produced; ``xpsr_jax.demo`` times them, prints them and can skip finished ones.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import numpy as np

# Real photos bundled with scikit-image (no download). The cat and the coffee cup are held out of training and
# become the test set; the other four are the training set.
TRAIN_PHOTOS = ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field")
TEST_PHOTOS = ("chelsea", "coffee")
PHOTO_MAX_SIDE = 512


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    steps: int = 4  # training steps
    seed: int = 0
    crop_size: int = 128  # training crops (HR side); the held-out HR crops are twice this, their LR a quarter
    epochs: int = 2  # degraded copies of each training photo: 4 photos x 2 = one global batch of 8
    sr_steps: int = 4  # sampling steps (the paper uses 20)
    process_size: int = 128  # sampling: the short side is raised to this (the paper uses 512)

    @property
    def test_hr_size(self) -> int:
        return 2 * self.crop_size


class DemoPaths:
    """Where every stage writes, under the demo's output folder."""

    # top-level entries a demo run owns (and deletes when it starts again without --keep)
    OWNED = ("photos", "degraded", "pairs", "models", "captions", "data", "run", "weights", "sr", "sr-bicubic",
             "report")

    def __init__(self, root: Path):
        self.root = root = Path(root)
        self.photos_train, self.photos_test = root / "photos" / "train", root / "photos" / "test"
        # make-data outputs without captions; the held-out pairs also as PNG folders LR/ and HR/ (sr, eval)
        self.degraded_train, self.degraded_test = root / "degraded" / "train", root / "degraded" / "test"
        self.pairs_test = root / "pairs" / "test"
        self.llava = root / "models" / "tiny-llava"
        self.captions_train, self.captions_test = root / "captions" / "train.jsonl", root / "captions" / "test.jsonl"
        self.dataset = root / "data" / "train"
        self.run = root / "run"
        self.flax, self.torch = root / "weights" / "flax", root / "weights" / "torch"
        self.torch_check = root / "weights" / "pytorch_check.json"
        self.sr = root / "sr"
        self.bicubic = root / "sr-bicubic"
        self.report = root / "report"


# ---------------------------------------------------------------------------------------------------- photos

def load_photos(names) -> tuple[list[np.ndarray], str]:
    """(photos, where they came from). Without scikit-image the project's procedural pictures stand in."""
    import cv2

    try:
        import skimage.data
    except ImportError:
        from xpsr_jax.data.synthetic import sample_photos

        return sample_photos(len(names), PHOTO_MAX_SIDE), "procedural pictures (scikit-image is not installed)"
    out = []
    for name in names:
        img = np.asarray(getattr(skimage.data, name)())
        img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]
        h, w = img.shape[:2]
        if max(h, w) > PHOTO_MAX_SIDE:
            f = PHOTO_MAX_SIDE / max(h, w)
            img = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        out.append(np.ascontiguousarray(img, dtype=np.uint8))
    return out, "scikit-image's bundled photos"


def stage_photos(p: DemoPaths, s: DemoSettings) -> str:
    from PIL import Image

    from xpsr_jax.files import atomic_open

    for folder, names in ((p.photos_train, TRAIN_PHOTOS), (p.photos_test, TEST_PHOTOS)):
        folder.mkdir(parents=True, exist_ok=True)
        photos, origin = load_photos(names)
        for name, img in zip(names, photos):
            with atomic_open(folder / f"{name}.png", "wb") as f:
                Image.fromarray(img).save(f, format="PNG")
    return f"{len(TRAIN_PHOTOS)} training and {len(TEST_PHOTOS)} held-out photos ({origin})"


# ---------------------------------------------------------------------------------------------------- degrade

def stage_degrade(p: DemoPaths, s: DemoSettings) -> str:
    """`xpsr-jax make-data`: the Real-ESRGAN chain of XPSR's data on both photo sets."""
    from xpsr_jax.data.export_pairs import export_pairs
    from xpsr_jax.data.make_data import MakeDataConfig, make_data

    summary = make_data(MakeDataConfig(source=str(p.photos_train), out=str(p.degraded_train), epochs=s.epochs,
                                       seed=s.seed, crop_size=s.crop_size, progress=False))
    n_train = summary["host_totals"]["written"]
    # held out: a fresh seed, and the LR kept at 1/4 so that `sr` really upscales x4; `xpsr-jax export-pairs`
    make_data(MakeDataConfig(source=str(p.photos_test), out=str(p.degraded_test), seed=s.seed + 1000,
                             crop_size=s.test_hr_size, lr_size=s.test_hr_size // 4, progress=False))
    n_test = export_pairs(p.degraded_test, p.pairs_test, per_copy_ids=False)
    lr = s.test_hr_size // 4
    return (f"{n_train} training pairs ({s.crop_size}² HR, LR upsampled to {s.crop_size}²), {n_test} held-out "
            f"pairs ({lr}² LR, {s.test_hr_size}² HR)")


# ---------------------------------------------------------------------------------------------------- caption

def stage_caption(p: DemoPaths, s: DemoSettings) -> str:
    """`xpsr-jax caption degraded/train OUT --model tiny-llava` (every degraded copy, straight from the records)
    and `xpsr-jax caption pairs/test/LR OUT --hr-dir pairs/test/HR`: both prompts of every LR image and its HR."""
    from xpsr_jax.captions.runner import CaptionJob, caption_folder, load_captioners
    from xpsr_jax.captions.tiny import make_tiny_llava

    single_torch_thread()
    import transformers

    transformers.utils.logging.disable_progress_bar()  # its save/load bars would split the stage lines
    make_tiny_llava(p.llava, seed=s.seed)
    captioners = None
    n = 0
    for images, hr_dir, out in ((p.degraded_train, None, p.captions_train),
                                (p.pairs_test / "LR", p.pairs_test / "HR", p.captions_test)):
        job = CaptionJob(images=images, out=out, hr_dir=hr_dir, model=str(p.llava), device="cpu", progress=False)
        captioners = captioners or load_captioners(job)
        result = caption_folder(job, captioners)
        if result.problems:
            raise RuntimeError(f"captioning {images} failed: {result.problems[:3]}")
        n += result.captioned
    return (f"{n} LR images and their HR crops, a high- and a low-level prompt for each (a random LLaVA: word "
            "salad)")


def stage_dataset(p: DemoPaths, s: DemoSettings) -> str:
    """`xpsr-jax make-data HR OUT --captions store.jsonl`: the same pairs (same seed), now with their prompts."""
    from xpsr_jax.data.make_data import MakeDataConfig, make_data

    summary = make_data(MakeDataConfig(source=str(p.photos_train), out=str(p.dataset), epochs=s.epochs,
                                       seed=s.seed, crop_size=s.crop_size, captions=str(p.captions_train),
                                       progress=False))
    c = summary["host_totals"]["captions"]
    if c["missing"]:
        raise RuntimeError(f"{c['missing']} training pairs found no captions in {p.captions_train}")
    return f"{summary['host_totals']['written']} pairs, {c['joined']} with captions, in ArrayRecord shards"


# ---------------------------------------------------------------------------------------------------- train

def train_config(p: DemoPaths, s: DemoSettings):
    """xpsr_jax/configs/tiny.py pointed at the demo's records, on the tests' (data 4, fsdp 2) mesh when 8 devices
    exist (the same program as theirs at the same crop size: a shared compilation cache holds it once)."""
    import jax

    from xpsr_jax import testing
    from xpsr_jax.train.cli import load_config

    c = load_config("tiny", [])
    n = jax.device_count()
    c.mesh.shape = testing.MESH_8 if n >= 8 else (("data", -1), ("fsdp", 1))
    c.data.source = "records"
    c.data.path = str(p.dataset)
    c.data.resolution = s.crop_size
    c.num_train_steps = s.steps
    c.checkpoint_every = s.steps
    c.keep_checkpoints = 1
    c.seed = s.seed
    return c


def _finish_lazy_imports() -> None:
    """Before the compile thread starts: the data stages (make-data's tfds metadata, the grain pipeline) must not
    run etils' lazy_imports() while JAX traces in that thread (see :mod:`xpsr_jax.data.import_guard`)."""
    from xpsr_jax.data.import_guard import finish_lazy_imports

    finish_lazy_imports()


class TrainerPrep:
    """Compiles the train step in a thread while the data stages run: XLA compiles on one core, and the
    degradation and captioning keep the other one busy, so the compile mostly costs no wall time."""

    def __init__(self, p: DemoPaths, s: DemoSettings):
        self.config = train_config(p, s)
        self.trainer = None
        self.error = None
        _finish_lazy_imports()
        self._thread = threading.Thread(target=self._build, name="compile-train-step", daemon=True)
        self._thread.start()

    def _build(self):
        try:
            from xpsr_jax.train import partition
            from xpsr_jax.train.trainer import create_trainer

            mesh = partition.make_mesh(tuple(tuple(a) for a in self.config.mesh.shape))
            self.trainer = create_trainer(self.config, mesh)
        except BaseException as e:  # noqa: BLE001 - re-raised in the train stage, where it belongs
            self.error = e

    def get(self):
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.trainer


def stage_train(p: DemoPaths, s: DemoSettings, prep: TrainerPrep | None = None) -> str:
    """`xpsr-jax train --config tiny --config.data.source=records ...`."""
    import jax

    from xpsr_jax.train.loop import train_and_evaluate

    trainer = prep.get() if prep is not None else None
    config = prep.config if prep is not None else train_config(p, s)
    summary = train_and_evaluate(config, p.run, trainer=trainer)
    first, last = summary.losses[min(summary.losses)], summary.losses[max(summary.losses)]
    mesh = " x ".join(f"{a} {n}" for a, n in config.mesh.shape)
    return (f"{summary.end_step} steps of batch {config.global_batch_size} on {jax.device_count()} CPU devices "
            f"({mesh}); loss {first:.4f} -> {last:.4f}; train step compiled in {summary.compile_seconds:.0f} s")


# ---------------------------------------------------------------------------------------------------- export

def stage_export(p: DemoPaths, s: DemoSettings) -> str:
    """`xpsr-jax export RUN FLAX --torch TORCH`."""
    from xpsr_jax.train.export import export_run
    from xpsr_jax.weights import checkpoint
    from xpsr_jax.weights.xpsr_convert import write_official

    export_run(p.run, p.flax, overwrite=True)
    meta, params = checkpoint.load(p.flax, components=("unet", "controlnet"))
    write_official(checkpoint.unet_config(meta), params, p.torch)
    return f"Flax checkpoint (step {meta['source']['step']}) and PyTorch unet/ + controlnet/ folders"


def stage_pytorch(p: DemoPaths, s: DemoSettings) -> str:
    """One denoiser call (ControlNet + UNet) on the same inputs in JAX and in PyTorch from the exported files."""
    import jax
    import torch

    from xpsr_jax import XPSRDenoiser, torch_ref

    single_torch_thread()
    den = XPSRDenoiser.from_pretrained(p.flax, attention_impl="xla")
    cfg = den.model.config
    rng = np.random.default_rng(s.seed)
    h = s.crop_size // 8
    inputs = [rng.standard_normal((1, 4, h, h)).astype(np.float32), np.array([500.0], np.float32),
              rng.standard_normal((1, 77, cfg.cross_attention_dim)).astype(np.float32),
              rng.standard_normal((1, 77, cfg.cross_attention_dim)).astype(np.float32),
              rng.random((1, 3, 8 * h, 8 * h)).astype(np.float32)]
    with jax.default_matmul_precision("highest"):
        eps, _ = den(*inputs)
    unet, controlnet = torch_ref.load_official(p.torch)
    with torch.no_grad():
        x, t, hi, lo, lr = (torch.from_numpy(a) for a in inputs)
        out = controlnet(x, t, hi, lo, lr)
        want = unet(x, t, hi, out.down_residuals, out.mid_residual).numpy()
    rel = float(np.abs(eps - want).max() / np.abs(want).max())
    ok = rel <= 1e-4
    from xpsr_jax.files import atomic_write_json

    atomic_write_json(p.torch_check, {"max_abs_diff_over_max_abs": rel, "tolerance": 1e-4, "ok": ok,
                                      "inputs": "latents (1,4,%d,%d), t=500, random prompts and LR" % (h, h)})
    if not ok:
        raise RuntimeError(f"PyTorch and JAX disagree: max|diff| / max|y| = {rel:.2e} > 1e-4")
    return f"reloaded in PyTorch; one denoiser call, max|JAX - PyTorch| / max|PyTorch| = {rel:.1e}"


# ---------------------------------------------------------------------------------------------------- sr, eval

def stage_sr(p: DemoPaths, s: DemoSettings) -> str:
    """`xpsr-jax sr pairs/test/LR OUT --weights FLAX --captions test.jsonl --steps N --process-size P`."""
    from xpsr_jax.infer.runner import SRRunner
    from xpsr_jax.infer.settings import SRSettings

    settings = SRSettings(steps=s.sr_steps, process_size=s.process_size, seed=s.seed)
    runner = SRRunner.create(p.flax, settings, captions=p.captions_test)
    report = runner.run([p.pairs_test / "LR"], p.sr, progress=False)
    if report.failed:
        raise RuntimeError(f"super-resolution failed for {report.failed}")
    return (f"{report.written} held-out LR images x4 (DDPM, {s.sr_steps} steps instead of the paper's 20, "
            f"process size {s.process_size} instead of 512)")


def write_bicubic(p: DemoPaths) -> None:
    """Plain PIL bicubic x4 of the same LR images: a reference row in the report, so the tiny model's numbers
    are read against something familiar."""
    from PIL import Image

    from xpsr_jax.files import atomic_open

    p.bicubic.mkdir(parents=True, exist_ok=True)
    for lr in sorted((p.pairs_test / "LR").glob("*.png")):
        with Image.open(lr) as im, atomic_open(p.bicubic / lr.name, "wb") as f:
            im.convert("RGB").resize((im.width * 4, im.height * 4), Image.BICUBIC).save(f, format="PNG")


def stage_eval(p: DemoPaths, s: DemoSettings) -> str:
    """`xpsr-jax eval SR HR --lr LR --out REPORT` (and `--append` for the bicubic row)."""
    from xpsr_jax.eval.evaluate import EvalConfig, RunInfo, evaluate_dataset
    from xpsr_jax.eval.report import summary_rows, write_reports

    write_bicubic(p)
    hr, lr = p.pairs_test / "HR", p.pairs_test / "LR"
    tiny = RunInfo(model_variant=f"tiny random XPSR trained {s.steps} steps on 4 photos (demo)", colour_fix="adain",
                   extra={"note": "the numbers show that the chain runs, not XPSR's quality",
                          "sampling_steps": str(s.sr_steps), "process_size": str(s.process_size),
                          "seed": str(s.seed)})
    results = [
        evaluate_dataset(p.sr, hr, lr_dir=lr, name="held-out photos: tiny XPSR (demo)", config=EvalConfig(),
                         run=tiny, progress=False),
        evaluate_dataset(p.bicubic, hr, lr_dir=lr, name="held-out photos: bicubic x4 (reference)",
                         config=EvalConfig(), run=RunInfo(model_variant="PIL bicubic", colour_fix="none"),
                         progress=False),
    ]
    write_reports(results, p.report, crop_size=min(160, s.test_hr_size))
    if any(r["n_evaluated"] == 0 for r in results):
        raise RuntimeError(f"some images could not be evaluated: {[r['mismatches'] for r in results]}")
    header, rows = summary_rows(results)
    cols = [i for i, h in enumerate(header) if h.split()[0] in ("PSNR", "SSIM", "LPIPS")]
    return "; ".join(f"{row[0].split(': ')[1]}: " + ", ".join(f"{header[i]} {row[i]}" for i in cols)
                     for row in rows)


def single_torch_thread() -> None:
    """The demo's PyTorch models are tiny, so per-op overhead dominates: a second intra-op thread only adds
    synchronisation, and on 2 cores it fights the background compile (measured: 0.6 s vs 2-13 s to caption)."""
    import torch

    torch.set_num_threads(1)


def quiet_environment() -> None:
    """Fewer library messages between the stage lines (set before those libraries are imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never downloads
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

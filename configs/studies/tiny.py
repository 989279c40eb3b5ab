"""A tiny study for tests and smoke runs on a CPU: the tiny model, full vs. without the high-level prompt (the same
compiled train step: that ablation changes only which prompt is fed), 2 seeds, 2 training steps, 1 sampling step,
on the demo's two held-out photos (x4 from 16 px to 64 px, prompts in the official folder layout).

Use: xpsr-jax study run configs/studies/tiny.py --workdir studies/tiny && xpsr-jax study report studies/tiny
(on a host with 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 on a CPU).
"""

from pathlib import Path

from xpsr_jax import testing
from xpsr_jax.study.spec import Published, Row, StudySpec, TestSet

HR_SIDE, SCALE = 64, 4
PROMPTS = {"chelsea": ("a cat", "the image is blurry"), "coffee": ("a cup of coffee", "the image is noisy")}


def build_photos(lr_dir: Path, hr_dir: Path) -> None:
    """The demo's held-out photos, centre-cropped to HR_SIDE² (HR) and area-downscaled by SCALE (LR), with their
    prompts in DIR/highlevel_prompt/ and DIR/lowlevel_prompt_q/ beside DIR/LR."""
    import cv2
    from PIL import Image

    from xpsr_jax.demo_stages import load_photos
    from xpsr_jax.files import atomic_open, atomic_write_text

    photos, _ = load_photos(tuple(PROMPTS))
    root = lr_dir.parent
    for folder in (lr_dir, hr_dir, root / "highlevel_prompt", root / "lowlevel_prompt_q"):
        folder.mkdir(parents=True, exist_ok=True)
    for (name, (high, low)), img in zip(PROMPTS.items(), photos):
        h, w = img.shape[:2]
        side = min(h, w)
        square = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        hr = cv2.resize(square, (HR_SIDE, HR_SIDE), interpolation=cv2.INTER_AREA)
        lr = cv2.resize(hr, (HR_SIDE // SCALE, HR_SIDE // SCALE), interpolation=cv2.INTER_AREA)
        atomic_write_text(root / "highlevel_prompt" / f"{name}.txt", high)
        atomic_write_text(root / "lowlevel_prompt_q" / f"{name}.txt", low)
        for folder, pixels in ((hr_dir, hr), (lr_dir, lr)):
            with atomic_open(folder / f"{name}.png", "wb") as f:
                Image.fromarray(pixels).save(f, format="PNG")


def get_spec() -> StudySpec:
    return StudySpec(
        name="tiny",
        rows=(Row("full", "tiny XPSR", "tiny"),
              Row("no_highlevel", "tiny, w/o high-level prompt", "tiny", {"model.highlevel_prompt": "none"})),
        seeds=(0, 1),
        test_sets=(TestSet("photos", lr_dir="testsets/photos/LR", hr_dir="testsets/photos/HR", upscale=SCALE,
                           build=build_photos),),
        metrics=("psnr", "ssim", "lpips", "clipiqa", "musiq", "maniqa", "liqe"),
        sampling={"steps": 1, "process_size": HR_SIDE},
        # the tests' program: the tiny model on the 8-device mesh (data 4 x fsdp 2), batch 8, 64 px
        overrides={"mesh.shape": testing.MESH_8, "num_train_steps": 2, "checkpoint_every": 2, "keep_checkpoints": 1},
        baseline="full",
        # not the paper's: made-up values that show where published numbers appear in the report
        published=(Published("full", "photos", "psnr", 20.0), Published("no_highlevel", "photos", "psnr", 19.5)),
        published_source="none for this toy study: illustrative values only",
    )

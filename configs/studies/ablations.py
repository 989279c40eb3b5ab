"""XPSR's ablation study, reproduced: the full model and four ablations, three seeds each, sampled and evaluated
on the reproduction guide's test sets (docs/reproduce.md §7), with the paper's numbers beside them.

Use: xpsr-jax study run configs/studies/ablations.py --workdir studies/ablations [--only full-seed0]
     xpsr-jax study report studies/ablations

Rows change only what they name (each is a packaged config, xpsr_jax/configs/): without the high-level prompt
(empty in training and sampling), without the low-level prompt (a plain ControlNet with no low-level or fusion
attention), sequential attention instead of SFA, without the DFC heads. Training inputs and the mesh are the same
for every row (the overrides below; add a pod's split with --config.mesh.shape=... --config.global_batch_size=...).

Published numbers (the source names where each comes from): the full model's row of the paper's main comparison
on DIV2K-Val and RealSR, and the ablation table's CLIPIQA / MUSIQ. The ablation table's full-model row
(0.689 / 68.71) is the main table's DIV2K-Val row, so its numbers are filed under DIV2K-Val here.
"""

from xpsr_jax.study.spec import Published, Row, StudySpec, TestSet

ROWS = (
    Row("full", "XPSR (full)", "../xpsr_paper.py"),
    Row("no_highlevel", "w/o high-level prompt", "ablation_no_highlevel"),
    Row("no_lowlevel", "w/o low-level prompt", "ablation_no_lowlevel"),
    Row("sequential", "sequential attention (no SFA)", "ablation_sequential"),
    Row("no_dfc", "w/o DFC", "ablation_no_dfc"),
)
SEEDS = (0, 1, 2)
# Folders as docs/reproduce.md §7 lays them out, relative to where the study runs.
TEST_SETS = (
    TestSet("DIV2K-Val", lr_dir="data/div2k_val_png/LR", hr_dir="data/div2k_val_png/HR", upscale=1.0,
            captions="captions/div2k_val.jsonl"),
    TestSet("RealSR", lr_dir="testset/RealSR_CenterCrop/LR", hr_dir="testset/RealSR_CenterCrop/HR", upscale=4.0),
)
# The same training inputs for every row (xpsr_paper.py sets them for the full row too).
OVERRIDES = {"init_from": "weights/xpsr-init", "data.path": "data/train", "data.worker_count": 8}

SOURCE = ("XPSR: Cross-modal Priors for Diffusion-based Image Super-Resolution (Qu et al., ECCV 2024): "
          "the main quantitative comparison (XPSR's rows on DIV2K-Val and RealSR) and the ablation table "
          "(CLIPIQA / MUSIQ per row)")
MAIN = {  # test set -> metric -> the paper's XPSR value
    "DIV2K-Val": {"clipiqa": 0.689, "musiq": 68.71, "maniqa": 0.441, "liqe": 4.38},
    "RealSR": {"clipiqa": 0.651, "musiq": 67.13, "maniqa": 0.422, "liqe": 4.21},
}
ABLATION = {  # row -> (CLIPIQA, MUSIQ)
    "no_highlevel": (0.645, 65.8),
    "no_lowlevel": (0.652, 66.1),
    "sequential": (0.661, 67.0),
    "no_dfc": (0.658, 66.5),
}


def published():
    numbers = [Published("full", test_set, metric, value)
               for test_set, values in MAIN.items() for metric, value in values.items()]
    numbers += [Published(row, "DIV2K-Val", metric, value)
                for row, pair in ABLATION.items() for metric, value in zip(("clipiqa", "musiq"), pair)]
    return tuple(numbers)


def get_spec() -> StudySpec:
    return StudySpec(name="xpsr-ablations", rows=ROWS, seeds=SEEDS, test_sets=TEST_SETS,
                     metrics=("psnr", "ssim", "lpips", "clipiqa", "musiq", "maniqa", "liqe"),
                     sampling={}, overrides=OVERRIDES, baseline="full", published=published(),
                     published_source=SOURCE)

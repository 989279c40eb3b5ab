"""Bad inputs, one table: every subcommand on the mistakes a user makes ends with its documented exit code and a
message naming the input, and leaves every file that existed before the call byte-identical (inputs, earlier
outputs, the weights).

Each row: (id, argv with ``{tmp}`` / ``{ckpt}`` placeholders, a setup function that creates the inputs in the
test's folder, the exit code, a regex the stderr must match, and optionally a check of what the call wrote).
Rows run in this process through ``xpsr_jax.cli.main``; the ones that need weights use one tiny random checkpoint
written once, and every row fails before anything compiles. Grow the table whenever a new case is found.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xpsr_jax.cli import main

from bad_inputs import *  # noqa: E402,F403 - the setup functions the rows name
from bad_inputs import _png  # noqa: E402


SR = ["sr", "{tmp}/photos/a.png", "{tmp}/out", "--weights", "{ckpt}", "--process-size", "64"]
TINY_RECORDS = ["train", "--config", "tiny", "--workdir", "{tmp}/run", "--config.data.source=records"]

ROWS = [
    # --- sr: outputs never over inputs, existing results only with --overwrite, numbers checked by argparse
    ("sr-out-is-input-folder", ["sr", "{tmp}/photos", "{tmp}/photos", "--weights", "{ckpt}", "--overwrite"],
     photos, 2, r"sr: error: OUT .*photos is the input INPUT"),
    ("sr-out-inside-input", ["sr", "{tmp}/photos", "{tmp}/photos/sr", "--weights", "{ckpt}"],
     photos, 2, r"OUT .*photos/sr lies inside the input INPUT"),
    ("sr-out-over-input-file", ["sr", "{tmp}/photos/a.png", "{tmp}/photos", "--weights", "{ckpt}", "--overwrite"],
     photos, 2, r"the output .*photos/a.png would replace the input"),
    ("sr-out-is-input-file", ["sr", "{tmp}/photos/a.png", "{tmp}/photos/a.png", "--weights", "{ckpt}"],
     photos, 2, r"OUT .*a.png is an input, not a folder"),
    ("sr-out-is-a-file", ["sr", "{tmp}/photos/a.png", "{tmp}/out.png", "--weights", "{ckpt}"],
     photos_and_out_file, 2, r"OUT .*out.png is a file, not a folder"),
    ("sr-existing-output", SR, photos_and_earlier_result, 2, r"out/a.png already exists; pass --overwrite"),
    ("sr-guidance-nan", SR + ["--guidance", "nan"], photos, 2, r"argument --guidance: 'nan' is not a finite"),
    ("sr-guidance-inf", SR + ["--guidance", "inf"], photos, 2, r"argument --guidance: 'inf' is not a finite"),
    ("sr-steps-zero", SR + ["--steps", "0"], photos, 2, r"argument --steps: '0' must be in \[1, 1000\]"),
    ("sr-upscale-negative", SR + ["--upscale", "-2"], photos, 2, r"argument --upscale: '-2' must be a number > 0"),
    ("sr-batch-zero", SR + ["--batch-size", "0"], photos, 2, r"argument --batch-size: '0' must be a positive"),
    ("sr-noise-level", SR + ["--added-noise-level", "1000"], photos, 2, r"--added-noise-level: '1000' must be in"),
    ("sr-budget-nan", SR + ["--memory-budget-gb", "nan"], photos, 2, r"--memory-budget-gb: 'nan' is not a finite"),
    ("sr-weights-missing", ["sr", "{tmp}/photos/a.png", "{tmp}/out", "--weights", "{tmp}/nosuch"],
     photos, 2, r"sr: error: --weights .*nosuch: no such folder"),
    ("sr-weights-not-a-checkpoint", ["sr", "{tmp}/photos/a.png", "{tmp}/out", "--weights", "{tmp}/weights"],
     not_a_checkpoint, 1, r"weights is not an xpsr-jax Flax checkpoint: no xpsr.json"),
    ("sr-captions-missing", SR + ["--captions", "{tmp}/nosuch.jsonl"], photos, 2,
     r"--captions .*nosuch.jsonl: no such file"),
    ("sr-missing-input", ["sr", "{tmp}/nosuch.png", "{tmp}/out", "--weights", "{ckpt}"],
     nothing, 1, r"nosuch.png: no such file or folder[\s\S]*no image was written", failed_json_lists("nosuch")),
    ("sr-only-input-corrupt", ["sr", "{tmp}/photos", "{tmp}/out", "--weights", "{ckpt}"],
     corrupt_photo, 1, r"broken.png: cannot read image header[\s\S]*no image was written",
     failed_json_lists("broken.png")),
    ("sr-prompt-not-utf8", ["sr", "{tmp}/photos", "{tmp}/out", "--weights", "{ckpt}", "--process-size", "64"],
     photo_with_latin1_prompt, 1, r"prompt file .*a.txt is not UTF-8", failed_json_lists("a.png")),
    ("sr-no-output-folder", ["sr", "{tmp}/photos", "--weights", "{ckpt}"], photos, 2,
     r"give at least one INPUT and the OUT folder"),
    # --- convert
    ("from-torch-no-config", ["convert", "from-torch", "{tmp}/ckpt", "{tmp}/flax"],
     torch_ckpt_without_configs, 1, r"convert from-torch: error: config.json not found in .*ckpt/controlnet"),
    ("from-torch-bad-config", ["convert", "from-torch", "{tmp}/ckpt", "{tmp}/flax"],
     torch_ckpt_with_bad_config, 1, r"convert from-torch: error: 4 down blocks for 2 levels"),
    ("from-torch-missing", ["convert", "from-torch", "{tmp}/nosuch", "{tmp}/flax"],
     nothing, 2, r"CKPT .*nosuch: no such folder"),
    ("from-torch-existing-out", ["convert", "from-torch", "{tmp}/ckpt", "{tmp}/flax"],
     torch_ckpt_and_existing_out, 2, r"OUT: .*flax already exists; pass --overwrite"),
    ("from-torch-out-is-input", ["convert", "from-torch", "{tmp}/ckpt", "{tmp}/ckpt", "--overwrite"],
     torch_ckpt_without_configs, 2, r"OUT .*ckpt is the input CKPT"),
    ("sd15-existing-out", ["convert", "sd15", "{tmp}/sd15", "{tmp}/xpsr"],
     sd15_and_existing_out, 2, r"convert sd15: error: OUT: .*xpsr already exists; pass --overwrite"),
    ("sd15-out-is-src", ["convert", "sd15", "{tmp}/sd15", "{tmp}/sd15", "--overwrite"],
     sd15_folder, 2, r"OUT .*sd15 is the input SRC"),
    ("sd15-out-holds-src", ["convert", "sd15", "{tmp}/sd15", "{tmp}", "--overwrite"],
     sd15_folder, 2, r"OUT .* holds the input SRC"),
    ("sd15-out-inside-src", ["convert", "sd15", "{tmp}/sd15", "{tmp}/sd15/xpsr"],
     sd15_folder, 2, r"OUT .*sd15/xpsr lies inside the input SRC"),
    ("to-torch-existing-out", ["convert", "to-torch", "{ckpt}", "{tmp}/torch"],
     exported_before, 2, r"convert to-torch: error: OUT: .*torch/unet already exists; pass --overwrite"),
    ("to-torch-out-is-a-file", ["convert", "to-torch", "{ckpt}", "{tmp}/torch.txt", "--overwrite"],
     torch_txt, 2, r"convert to-torch: error: OUT .*torch.txt is a file, not a folder"),
    ("to-torch-not-flax", ["convert", "to-torch", "{tmp}/sd15", "{tmp}/torch"],
     sd15_folder, 1, r"sd15 is not an xpsr-jax Flax checkpoint"),
    ("to-torch-out-is-input", ["convert", "to-torch", "{ckpt}", "{ckpt}", "--overwrite"],
     nothing, 2, r"OUT .* is the input FLAX"),
    # --- make-data
    ("make-data-all-corrupt", ["make-data", "{tmp}/hr", "{tmp}/pairs", "--crop-size", "64", "--no-progress"],
     corrupt_hr_images, 1, r"make-data: error: 0 pairs written .*every image was skipped \(2 corrupt\)",
     not_marked_complete),
    ("make-data-out-is-input", ["make-data", "{tmp}/hr", "{tmp}/hr"], hr_folder, 2, r"OUT .*hr is the input HR_DIR"),
    ("make-data-out-inside-input", ["make-data", "{tmp}/hr", "{tmp}/hr/pairs"], hr_folder, 2,
     r"OUT .*hr/pairs lies inside the input HR_DIR"),
    ("make-data-other-settings", ["make-data", "{tmp}/hr", "{tmp}/pairs", "--crop-size", "64"],
     hr_and_other_plan, 2, r"pairs was made with other settings .*pass --overwrite to start over"),
    ("make-data-epochs-zero", ["make-data", "{tmp}/hr", "{tmp}/pairs", "--epochs", "0"], hr_folder, 2,
     r"argument --epochs: '0' must be a positive integer"),
    ("make-data-crop-negative", ["make-data", "{tmp}/hr", "{tmp}/pairs", "--crop-size", "-64"], hr_folder, 2,
     r"argument --crop-size: '-64' must be a positive integer"),
    ("make-data-host-index", ["make-data", "{tmp}/hr", "{tmp}/pairs", "--num-hosts", "2", "--host-index", "2"],
     hr_folder, 2, r"make-data: error: host_index 2 must lie in \[0, num_hosts=2\)"),
    ("make-data-hr-only-epochs", ["make-data", "{tmp}/hr", "{tmp}/pairs", "--hr-only", "--epochs", "3"],
     hr_folder, 2, r"hr_only records are degraded online"),
    ("make-data-hr-is-file", ["make-data", "{tmp}/hr.png", "{tmp}/pairs"], hr_file, 2,
     r"HR_DIR .*hr.png: not a folder"),
    ("make-data-captions-not-utf8", ["make-data", "{tmp}/hr", "{tmp}/pairs", "--crop-size", "64", "--captions",
                                     "{tmp}/c.jsonl", "--no-progress"],
     hr_and_latin1_captions, 0, r"c.jsonl:1: skipping an unreadable caption line \(.*utf-8"),
    ("make-data-captions-missing", ["make-data", "{tmp}/hr", "{tmp}/pairs", "--captions", "{tmp}/c.jsonl"],
     hr_folder, 2, r"--captions .*c.jsonl: no such file"),
    # --- caption
    ("caption-no-images", ["caption", "{tmp}/imgs", "{tmp}/c.jsonl"], empty_images, 1,
     r"caption: error: no images .* under IMAGES .*imgs"),
    ("caption-out-is-folder", ["caption", "{tmp}/photos", "{tmp}/out"], photos_and_earlier_result, 2,
     r"OUT .*out is a folder"),
    ("caption-out-inside-images", ["caption", "{tmp}/photos", "{tmp}/photos/c.jsonl"], photos, 2,
     r"OUT .*c.jsonl lies inside the input IMAGES"),
    ("caption-out-is-not-a-store", ["caption", "{tmp}/photos", "{tmp}/notes.txt"], photos_and_notes, 2,
     r"OUT .*notes.txt exists and is not a caption store"),
    ("caption-import-into-image", ["caption", "--import-official", "{tmp}/set", "{tmp}/photos/a.png"],
     official_prompts_and_photo, 2, r"OUT .*a.png exists and is not a caption store"),
    ("caption-merge-into-image", ["caption", "--merge", "{tmp}/photos/a.png"], photos, 2,
     r"OUT .*a.png exists and is not a caption store"),
    ("caption-batch-zero", ["caption", "{tmp}/photos", "{tmp}/c.jsonl", "--batch-size", "0"], photos, 2,
     r"argument --batch-size: '0' must be a positive integer"),
    ("caption-import-not-utf8", ["caption", "--import-official", "{tmp}/set", "{tmp}/c.jsonl"],
     official_prompts_latin1, 1, r"prompt file .*0001.txt is not UTF-8"),
    ("caption-import-replaces", ["caption", "--import-official", "{tmp}/set", "{tmp}/c.jsonl"],
     store_and_official_prompts, 2, r"c.jsonl already holds records for '0001'; pass --overwrite"),
    ("caption-import-nothing", ["caption", "--import-sidecar", "{tmp}/side", "{tmp}/c.jsonl"],
     sidecar_folder_without_text, 1, r"no prompt files .* under .*side; nothing imported"),
    # --- export-pairs
    ("export-pairs-missing", ["export-pairs", "{tmp}/nosuch", "{tmp}/png"], nothing, 1,
     r"export-pairs: error: .*nosuch"),
    ("export-pairs-empty", ["export-pairs", "{tmp}/pairs", "{tmp}/png"], empty_records, 1,
     r"pairs holds no pairs; nothing to export"),
    ("export-pairs-out-is-a-file", ["export-pairs", "{tmp}/pairs", "{tmp}/png.txt"], one_pair_and_file, 2,
     r"export-pairs: error: OUT .*png.txt is a file, not a folder"),
    ("export-pairs-out-is-input", ["export-pairs", "{tmp}/pairs", "{tmp}/pairs"], empty_records, 2,
     r"OUT .*pairs/LR lies inside the input RECORDS"),
    ("export-pairs-other-bytes", ["export-pairs", "{tmp}/pairs", "{tmp}/png", "--plain-ids", "--no-progress"],
     one_pair_and_other_png, 2, r"export-pairs: error: OUT: .*png/LR/a.png already exists; pass --overwrite",
     lambda t: not (t / "png" / "HR").exists() or pytest.fail("wrote HR although LR was refused")),
    # --- eval
    ("eval-out-is-pred", ["eval", "{tmp}/pred", "{tmp}/gt", "--out", "{tmp}/pred"], pred_and_gt, 2,
     r"eval: error: --out .*pred is the input PRED"),
    ("eval-existing-crops", ["eval", "{tmp}/pred", "{tmp}/gt", "--out", "{tmp}/report"], pred_gt_and_crops, 2,
     r"--out: .*report/crops already exists; pass --overwrite"),
    ("eval-existing-report", ["eval", "{tmp}/pred", "{tmp}/gt", "--out", "{tmp}/report"], pred_gt_and_report, 2,
     r"--out: .*results.json already exists; pass --overwrite"),
    ("eval-crop-border-negative", ["eval", "{tmp}/pred", "{tmp}/gt", "--crop-border", "-1"], pred_and_gt, 2,
     r"argument --crop-border: '-1' must be an integer >= 0"),
    ("eval-psnr-eps-nan", ["eval", "{tmp}/pred", "{tmp}/gt", "--psnr-eps", "nan"], pred_and_gt, 2,
     r"argument --psnr-eps: 'nan' is not a finite number"),
    ("eval-no-pairs", ["eval", "{tmp}/pred", "{tmp}/gt", "--out", "{tmp}/report", "--metrics", "psnr", "--no-html",
                       "--no-progress"], pred_and_other_gt, 1, r"eval: error: no image pair could be evaluated"),
    ("eval-pred-missing", ["eval", "{tmp}/nosuch", "{tmp}/gt"], pred_and_gt, 2, r"PRED is not a folder: .*nosuch"),
    # --- train and export
    ("train-data-missing", TINY_RECORDS + ["--config.data.path={tmp}/nosuch"], nothing, 2,
     r"train: error: config.data.path='.*nosuch': no such folder"),
    ("train-data-not-made", TINY_RECORDS + ["--config.data.path={tmp}/pairs"], empty_folder, 2,
     r"config.data.path='.*pairs': not a finished make-data output"),
    ("train-data-zero-pairs", TINY_RECORDS + ["--config.data.path={tmp}/pairs"], empty_records, 2,
     r"config.data.path='.*pairs': the make-data output holds 0 pairs"),
    ("train-no-steps", ["train", "--config", "tiny", "--workdir", "{tmp}/run", "--config.num_train_steps=0"],
     nothing, 2, r"config.num_train_steps=0: must be a positive integer"),
    ("train-config-unknown", ["train", "--config", "nosuch", "--workdir", "{tmp}/run"], nothing, 2,
     r"train: error: config 'nosuch': no such file, and not a bundled config"),
    ("train-override-misspelt", ["train", "--config", "tiny", "--workdir", "{tmp}/run",
                                 "--config.optim.learning_rat=1"], nothing, 2,
     r"train: error: bad override .*the config has no key 'optim.learning_rat'"),
    ("train-learning-rate-inf", ["train", "--config", "tiny", "--workdir", "{tmp}/run",
                                 "--config.optim.learning_rate=1e999"], nothing, 2,
     r"train: error: config.optim.learning_rate=inf: must be a finite number"),
    ("train-probability", ["train", "--config", "tiny", "--workdir", "{tmp}/run",
                           "--config.data.hr_condition_prob=1.5"], nothing, 2,
     r"config.data.hr_condition_prob=1.5: must be a probability in \[0, 1\]"),
    ("train-init-from-missing", ["train", "--config", "tiny", "--workdir", "{tmp}/run",
                                 "--config.init_from={tmp}/nosuch"], nothing, 2,
     r"config.init_from='.*nosuch': not a Flax checkpoint folder"),
    # --- demo
    ("demo-steps-zero", ["demo", "--out", "{tmp}/demo", "--steps", "0"], nothing, 2,
     r"demo: error: argument --steps: '0' must be a positive integer"),
    ("demo-foreign-out", ["demo", "--out", "{tmp}/mine"], someones_folder, 2,
     r"demo: error: .*mine holds files the demo did not write"),
    ("export-workdir-missing", ["export", "{tmp}/nosuch", "{tmp}/exported"], nothing, 2,
     r"export: error: WORKDIR .*nosuch: no such folder"),
    ("export-out-is-a-file", ["export", "{tmp}/run", "{tmp}/exported.txt"], run_folder_and_file, 2,
     r"export: error: OUT .*exported.txt is a file, not a folder"),
    ("export-existing-out", ["export", "{tmp}/run", "{tmp}/exported"], run_folder_and_out, 2,
     r"OUT: .*exported already exists; pass --overwrite"),
]


# ------------------------------------------------------------------------------------------------- harness


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from xpsr_jax.infer.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


def _hashes(*roots: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


def _call(argv: list[str]) -> tuple[int, str]:
    """-> (exit code, warnings as the command line prints them on stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main(argv)
        except SystemExit as e:  # argparse errors
            code = e.code
    return code, "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught)


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(row, tmp_path, capsys, request):
    _, argv, setup, code, pattern, *check = row
    setup(tmp_path)
    needs_weights = any("{ckpt}" in a for a in argv)
    ckpt = request.getfixturevalue("ckpt") if needs_weights else tmp_path  # written once, for the rows that use it
    argv = [a.format(tmp=tmp_path, ckpt=ckpt) for a in argv]
    before = _hashes(tmp_path, ckpt)
    status, warned = _call(argv)
    assert status == code
    err = warned + capsys.readouterr().err
    assert re.search(pattern, err), err
    assert "Traceback" not in err
    if code:  # the error itself is the last line, in argparse's format
        assert re.match(r"xpsr-jax [a-z0-9 -]+: error: ", err.strip().splitlines()[-1]), err
    after = _hashes(tmp_path, ckpt)
    changed = [str(p) for p, h in before.items() if after.get(p) != h]
    assert not changed, f"files that existed before were changed or removed: {changed}"
    for c in check:
        c(tmp_path)


# ------------------------------------------------------------------------------------------------- the rest


def test_one_line_without_traceback_and_with_it_on_request(tmp_path):
    """A user's error is one line on stderr; XPSR_JAX_TRACEBACK=1 shows the traceback."""
    for sub in ("unet", "controlnet"):
        (tmp_path / "ckpt" / sub).mkdir(parents=True)
    argv = ["convert", "from-torch", str(tmp_path / "ckpt"), str(tmp_path / "out")]
    env = dict(os.environ, XPSR_JAX_TRACEBACK="0")
    proc = subprocess.run([sys.executable, "-m", "xpsr_jax.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("xpsr-jax convert from-torch: error: config.json not found in ") and "ckpt" in line
    with pytest.raises(Exception, match="config.json not found") as e:
        main(["--traceback", *argv])
    assert type(e.value).__name__ == "WeightFileError"


def test_sr_output_names_keep_dotted_stems(tmp_path):
    """photo.v1.png and photo.v2.png are two outputs, not one overwritten by the other."""
    from xpsr_jax.infer.inputs import discover
    from xpsr_jax.infer.runner import output_paths

    for name in ("photo.v1.png", "photo.v2.png"):
        _png(tmp_path / "in" / name)
    items, problems = discover([tmp_path / "in"])
    assert not problems
    outs = sorted(p.name for item in items for p in output_paths(item, tmp_path / "out"))
    assert outs == ["photo.v1.json", "photo.v1.png", "photo.v2.json", "photo.v2.png"]


def test_caption_store_drops_a_torn_last_line_on_resume(tmp_path):
    """An append-only store is safe as it is: a line cut short by a crash is dropped when the store is reopened,
    and the next record starts on a line of its own."""
    from xpsr_jax.captions.store import CaptionStore, read_records

    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "a", "highlevel": "a cat"}) + "\n" + '{"id": "b", "highlev')
    with CaptionStore.open(path) as store:
        assert "a" in store and "b" not in store
        store.add({"id": "c", "highlevel": "a dog"})
    assert [r["id"] for r in read_records(path)] == ["a", "c"]


def test_make_data_redoes_a_run_that_wrote_nothing(tmp_path, capsys):
    """Every image skipped leaves no empty shard behind, so the same command, once the images are fixed, writes
    the pairs instead of taking the empty shards as finished."""
    corrupt_hr_images(tmp_path)
    argv = ["make-data", str(tmp_path / "hr"), str(tmp_path / "pairs"), "--crop-size", "64", "--no-progress"]
    assert main(argv) == 1
    _png(tmp_path / "hr" / "0.png", 64)  # the user replaces a broken file
    assert main(argv) == 0
    assert "1 pairs written, 1 skipped" in capsys.readouterr().out
    assert list((tmp_path / "pairs").rglob("dataset_info.json"))


def test_overwrite_replaces_results_but_never_inputs(tmp_path, capsys):
    """--overwrite is what lets export-pairs replace a file with other bytes; the same flag never lets a command
    write into its input."""
    one_pair_and_other_png(tmp_path)
    argv = ["export-pairs", str(tmp_path / "pairs"), str(tmp_path / "png"), "--plain-ids", "--no-progress"]
    assert main(argv + ["--overwrite"]) == 0
    lr = np.asarray(Image.open(tmp_path / "png" / "LR" / "a.png"))
    assert (lr == 128).all()  # the record's flat grey LR replaced the random image that was there
    assert main(["export-pairs", str(tmp_path / "pairs"), str(tmp_path / "pairs"), "--overwrite"]) == 2
    assert "lies inside the input RECORDS" in capsys.readouterr().err

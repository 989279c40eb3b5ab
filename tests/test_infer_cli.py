"""``xpsr-jax sr`` end to end on a tiny random checkpoint: a folder with three 32x32 LR images (one grayscale, one
with a sidecar caption) and one corrupt file, x4 at process_size 128. The good images are written with their JSON
sidecars, the corrupt one is reported, the exit code is 1, and a second run with the same seed repeats the pixels
(bit for bit with the same batching; other batch sizes differ by XLA's float rounding, ~1e-6 of the latent).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from xpsr_jax.cli import main
from xpsr_jax.infer.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lr")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L").save(root / "b_gray.png")
    (root / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "sub" / "c.jpg")
    (root / "sub" / "c.txt").write_text("  a cat sitting on a wall\nsecond line is ignored\n")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def _run(inputs, out, ckpt, *extra):
    return main(["sr", str(inputs), str(out), "--weights", str(ckpt), "--process-size", "128", *extra])


def test_cli_end_to_end(inputs, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(inputs, out, ckpt, "--lowlevel-prompt", "blurry") == 1  # the corrupt file fails the run
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 input(s) failed" in err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a.png", "b_gray.png", "sub/c.png"]
    for name in written:
        assert Image.open(out / name).size == (128, 128)
    meta = json.loads((out / "sub" / "c.json").read_text())
    assert meta["prompts"]["positive_high"].startswith("a cat sitting on a wall clean, high-resolution")
    assert meta["prompt_source"] == {"highlevel": "sidecar", "lowlevel": "flag"}
    assert meta["settings"]["seed"] == 0 and meta["sizes"]["output"] == [128, 128]
    assert "gray" in json.loads((out / "b_gray.json").read_text())["conversions"]
    failed = json.loads((out / "failed.json").read_text())
    assert [f["path"].endswith("broken.png") for f in failed] == [True]

    again = tmp_path / "again"
    (inputs / "broken.png").rename(tmp_path / "broken.png")  # now every input is good: exit code 0
    try:
        assert _run(inputs, again, ckpt, "--lowlevel-prompt", "blurry") == 0
    finally:
        (tmp_path / "broken.png").rename(inputs / "broken.png")
    for name in written:  # same seed, same names, same batches: the same pixels
        np.testing.assert_array_equal(np.asarray(Image.open(again / name)), np.asarray(Image.open(out / name)))
    assert "had no prompts" not in capsys.readouterr().out


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["sr", "--help"])
    assert "examples:" in capsys.readouterr().out

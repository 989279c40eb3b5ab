"""The caption pass: store format and durability, official-layout import, XPSR's prompt strings and
post-processing, and an offline end-to-end run with a tiny random LLaVA (shards, merge, resume, bad images)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from xpsr_jax.captions import cli as caption_cli
from xpsr_jax.captions.images import list_images
from xpsr_jax.captions.official import read_official, read_prompt_file, read_sidecars
from xpsr_jax.captions.prompts import (HIGHLEVEL_PROMPT, LOWLEVEL_INSTRUCTION, LOWLEVEL_PROMPT_LLAVA,
                                       highlevel_postprocess, lowlevel_postprocess)
from xpsr_jax.captions.store import (CaptionStore, load_captions, merge_shards, meta_path, read_meta,
                                     shard_path, shard_paths)


def run_caption(*argv: str) -> int:
    """``xpsr-jax caption ARGV`` through the subcommand's own parser."""
    parser = argparse.ArgumentParser(prog="xpsr-jax")
    caption_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["caption", *map(str, argv)])
    return args.func(args)


def write_images(folder, names, size, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in names:
        path = folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        # smooth gradients plus noise: a real-looking, cheap picture
        yy, xx = np.mgrid[0:size[0], 0:size[1]]
        base = np.stack([xx * 255 / size[1], yy * 255 / size[0], (xx + yy) * 127 / sum(size)], -1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)


# -- prompts ------------------------------------------------------------------------------------------------------

def test_prompt_strings_are_the_reference_ones():
    assert HIGHLEVEL_PROMPT == ("<image>\nUSER: Please provide a descriptive summary of the content of this image. "
                                "\nASSISTANT:")
    assert LOWLEVEL_INSTRUCTION == "Describe and evaluate the quality of the image."
    assert LOWLEVEL_PROMPT_LLAVA == "<image>\nUSER: Describe and evaluate the quality of the image. \nASSISTANT:"


@pytest.mark.parametrize("decoded, expected", [
    ("\nUSER: Please provide a summary. \nASSISTANT: The image shows\na red house.\n", "The image shows a red house."),
    ("USER: x \nASSISTANT: first ASSISTANT: second\n\npart", "second  part"),  # the last marker wins
    ("no marker at all\n", "no marker at all"),
    ("USER: x \nASSISTANT:", ""),
])
def test_highlevel_postprocess(decoded, expected):
    assert highlevel_postprocess(decoded) == expected


def test_lowlevel_postprocess():
    assert lowlevel_postprocess(" The quality is poor.\nIt is blurry.\r\n") == "The quality is poor. It is blurry."


# -- store ---------------------------------------------------------------------------------------------------------

def test_store_append_reopen_and_update(tmp_path):
    out = tmp_path / "c.jsonl"
    with CaptionStore.open(out) as store:
        store.add({"id": "sub/0001", "highlevel": "a cat", "lowlevel": "sharp"})
        store.add({"id": "0002", "highlevel": "line\u2028separator inside"})
        store.add({"id": "sub/0001", "lowlevel_hr": "very sharp"})  # later lines update fields
    store = CaptionStore.open(out)
    assert store.done_ids() == {"sub/0001", "0002"}
    assert store.get("sub/0001") == {"id": "sub/0001", "highlevel": "a cat", "lowlevel": "sharp",
                                     "lowlevel_hr": "very sharp"}
    assert store.get("0002")["highlevel"] == "line\u2028separator inside"
    assert store.get("missing") is None
    last_line = json.loads(out.read_text(encoding="utf-8").rstrip("\n").split("\n")[-1])
    assert last_line == store.get("sub/0001")  # whole updated records: "last line wins" readers agree
    assert [r["id"] for r in store] == ["0002", "sub/0001"]
    with pytest.raises(ValueError):
        store.add({"highlevel": "no id"})
    with pytest.raises(ValueError):
        store.add({"id": "x", "lowlevel": 3})
    store.add({"id": "y", "highlevel": "kept", "lowlevel": None})  # null means absent
    assert store.get("y") == {"id": "y", "highlevel": "kept"}


def test_store_partial_last_line_is_ignored_and_cut_before_appending(tmp_path):
    out = tmp_path / "c.jsonl"
    out.write_text('{"id": "a", "highlevel": "one"}\n{"id": "b", "highle', encoding="utf-8")
    store = CaptionStore.open(out)
    assert store.done_ids() == {"a"}
    store.add({"id": "c", "highlevel": "three"})
    store.close()
    assert out.read_text(encoding="utf-8").splitlines() == [
        '{"id": "a", "highlevel": "one"}', '{"id": "c", "highlevel": "three"}']
    # a complete record that only lacks its newline is kept, and terminated before the next append
    out.write_text('{"id": "a"}', encoding="utf-8")
    with CaptionStore.open(out) as store:
        assert store.done_ids() == {"a"}
        store.add({"id": "b"})
    assert CaptionStore.open(out).done_ids() == {"a", "b"}


def test_store_broken_middle_line_warns(tmp_path):
    out = tmp_path / "c.jsonl"
    out.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n', encoding="utf-8")
    with pytest.warns(UserWarning, match="broken caption record"):
        assert CaptionStore.open(out).done_ids() == {"a", "b"}


def test_store_shards_are_read_with_the_store_and_merged(tmp_path):
    out = tmp_path / "c.jsonl"
    assert shard_path(out, 1, 3).name == "c-shard-1-of-3.jsonl"
    with pytest.raises(ValueError):
        shard_path(out, 3, 3)
    with CaptionStore.open(out) as store:
        store.add({"id": "a", "highlevel": "from main"})
        store.add_run_meta({"run": "main"})
    for index, rid in ((0, "b"), (1, "c")):
        with CaptionStore.open(out, shard_index=index, num_shards=2) as store:
            assert store.write_path == shard_path(out, index, 2)
            store.add({"id": rid, "highlevel": f"from shard {index}"})
            store.add_run_meta({"run": index})
    assert [p.name for p in shard_paths(out)] == ["c-shard-0-of-2.jsonl", "c-shard-1-of-2.jsonl"]
    assert set(load_captions(out)) == {"a", "b", "c"}  # merged on read
    assert CaptionStore.open(out, merge_shards=False).done_ids() == {"a"}
    assert merge_shards(out) == 3
    assert shard_paths(out) == [] and not meta_path(shard_path(out, 0, 2)).exists()
    assert CaptionStore.open(out, merge_shards=False).done_ids() == {"a", "b", "c"}
    assert [r["run"] for r in read_meta(out)["runs"]] == ["main", 0, 1]


def test_list_images_ids_and_duplicates(tmp_path):
    write_images(tmp_path, ["0001", "sub/0002", "dup"], (8, 8), 0)
    (tmp_path / "dup.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    images, duplicates = list_images(tmp_path)
    assert list(images) == ["0001", "sub/0002"]
    assert list(duplicates) == ["dup"]


# -- importing existing text files --------------------------------------------------------------------------------

def _official_layout(root):
    files = {
        "highlevel_prompt/src/0001.txt": "  A red house.\nsecond line ignored\n",
        "highlevel_prompt_GT/src/0001.txt": "A red house, sharp.\n",
        "lowlevel_prompt/src/0001.txt": "Blurry.\n",  # the validation spelling, used when _q is absent
        "lowlevel_prompt_q_GT/src/0001.txt": "",
        "highlevel_prompt/0002.txt": "A dog.",
        "highlevel_prompt/_abnormal.txt": "src/0003 failed\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")


def test_read_official_layout(tmp_path):
    _official_layout(tmp_path)
    assert read_prompt_file(tmp_path / "highlevel_prompt/src/0001.txt") == "A red house."
    assert read_official(tmp_path) == {
        "0002": {"id": "0002", "highlevel": "A dog."},
        "src/0001": {"id": "src/0001", "highlevel": "A red house.", "highlevel_hr": "A red house, sharp.",
                     "lowlevel": "Blurry.", "lowlevel_hr": ""},
    }


def test_import_official_and_sidecars_through_the_cli(tmp_path, capsys):
    _official_layout(tmp_path / "set")
    out = tmp_path / "c.jsonl"
    assert run_caption("--import-official", tmp_path / "set", out) == 0
    assert load_captions(out)["src/0001"]["lowlevel"] == "Blurry."
    side = tmp_path / "side"
    (side / "sub").mkdir(parents=True)
    (side / "sub/0001.txt").write_text("\n", encoding="utf-8")
    (side / "0002.txt").write_text("  sidecar caption\n", encoding="utf-8")
    assert read_sidecars(side, "lowlevel") == {"0002": {"id": "0002", "lowlevel": "sidecar caption"},
                                               "sub/0001": {"id": "sub/0001", "lowlevel": ""}}
    assert run_caption("--import-sidecar", side, out, "--sidecar-field", "lowlevel_hr") == 0
    merged = load_captions(out)
    assert merged["0002"] == {"id": "0002", "highlevel": "A dog.", "lowlevel_hr": "sidecar caption"}
    assert run_caption("--import-official", side, out) == 2  # no prompt folders there
    assert "no highlevel_prompt" in capsys.readouterr().err


def test_command_line_argument_errors(tmp_path, capsys):
    (tmp_path / "lr").mkdir()
    out = tmp_path / "c.jsonl"
    assert run_caption(tmp_path / "lr", out, "--num-shards", 2, "--merge") == 2  # shards may still be writing
    assert run_caption(tmp_path / "lr", out, "--num-shards", 2, "--shard-index", 2) == 2
    assert run_caption(tmp_path / "missing", out) == 2
    assert run_caption("--merge", out) == 2  # nothing to merge
    assert run_caption(tmp_path / "lr") == 2
    assert capsys.readouterr().err.count("xpsr-jax caption: error:") == 5
    with pytest.raises(SystemExit) as exc:
        run_caption("--help")
    assert exc.value.code == 0 and "--import-official DIR OUT" in capsys.readouterr().out


def test_command_line_stays_light():
    code = "import sys, xpsr_jax.captions.cli; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- end to end with a tiny random LLaVA ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    from xpsr_jax.captions.tiny import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def test_legacy_prompt_length_counts_the_image_once(tiny_llava):
    from xpsr_jax.captions.llava import highlevel_captioner, legacy_prompt_length, load_llava

    loaded = load_llava(str(tiny_llava), device="cpu")
    captioner = highlevel_captioner(loaded, max_length=200)
    inputs = loaded.processor(images=[np.zeros((20, 24, 3), np.uint8)], text=[HIGHLEVEL_PROMPT],
                              return_tensors="pt")
    n_image = int((inputs["input_ids"] == loaded.processor.image_token_id).sum())
    assert n_image == 4  # 2x2 patches: the processor expands <image>
    assert legacy_prompt_length(inputs["input_ids"], loaded.processor.image_token_id) == captioner.prompt_length
    assert captioner.prompt_length == inputs["input_ids"].shape[1] - 3
    assert captioner.max_new_tokens == 200 - captioner.prompt_length


def test_caption_end_to_end_shards_merge_resume(tiny_llava, tmp_path, capsys):
    names = ["0001", "0002", "sub/0003"]
    write_images(tmp_path / "lr", names, (24, 20), seed=1)
    write_images(tmp_path / "hr", names, (48, 40), seed=2)
    out = tmp_path / "captions.jsonl"
    common = ["--hr-dir", tmp_path / "hr", "--model", tiny_llava, "--max-length", 40, "--batch-size", 2,
              "--no-progress"]
    for index in range(2):
        assert run_caption(tmp_path / "lr", out, "--num-shards", 2, "--shard-index", index, *common) == 0
    assert [p.name for p in shard_paths(out)] == ["captions-shard-0-of-2.jsonl", "captions-shard-1-of-2.jsonl"]
    # ids are dealt round-robin over the sorted list
    assert CaptionStore.open(shard_path(out, 0, 2), merge_shards=False).done_ids() == {"0001", "sub/0003"}
    assert run_caption("--merge", out) == 0
    assert shard_paths(out) == []

    records = load_captions(out)
    assert sorted(records) == names
    for record in records.values():
        for field in ("highlevel", "lowlevel", "highlevel_hr", "lowlevel_hr"):
            assert isinstance(record[field], str) and "\n" not in record[field]
            assert "ASSISTANT:" not in record[field]
    runs = read_meta(out)["runs"]
    assert [run["shard"] for run in runs] == [[0, 2], [1, 2]]
    high, low = runs[0]["highlevel"], runs[0]["lowlevel"]
    assert high["prompt"] == HIGHLEVEL_PROMPT and high["decoding"] == "greedy" and high["dtype"] == "float32"
    assert high["max_length"] == 40 and high["max_new_tokens"] == 40 - high["prompt_length"]
    assert low["prompt"] == LOWLEVEL_PROMPT_LLAVA and "deviation" in low

    # resume: nothing left, so the (here unloadable) model is never touched and nothing is written
    before = out.read_bytes()
    capsys.readouterr()
    assert run_caption(tmp_path / "lr", out, "--model", tmp_path / "no-such-model", "--no-progress") == 0
    assert "captioned 0, already done 3" in capsys.readouterr().out
    assert out.read_bytes() == before


def test_caption_reports_unreadable_images_and_captions_the_rest(tiny_llava, tmp_path, capsys):
    write_images(tmp_path / "lr", ["0001", "0003"], (24, 20), seed=3)
    (tmp_path / "lr" / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "captions.jsonl"
    status = run_caption(tmp_path / "lr", out, "--model", tiny_llava, "--max-length", 30, "--batch-size", 3,
                         "--no-progress")
    assert status == 1
    err = capsys.readouterr().err
    assert "0002: cannot read" in err
    assert set(load_captions(out)) == {"0001", "0003"}
    # the model loads only for images it can read: the broken one alone is reported, no load attempted
    assert run_caption(tmp_path / "lr", out, "--model", tmp_path / "missing", "--no-progress") == 1
    write_images(tmp_path / "lr", ["0004"], (24, 20), seed=4)
    capsys.readouterr()
    assert run_caption(tmp_path / "lr", out, "--model", tmp_path / "missing", "--no-progress") == 2
    assert "cannot load the model" in capsys.readouterr().err


def test_caption_make_data_records_then_join(tiny_llava, tmp_path, capsys):
    """The official order with one command per step: degrade (make-data), caption the degraded copies straight
    from the records (ID#COPY keys, LR and HR crop), make-data again with the store: the same pairs, every one
    joined with its own copy's prompts."""
    from xpsr_jax.data.make_data import MakeDataConfig, make_data
    from xpsr_jax.data.pipeline import records_source
    from xpsr_jax.data.records import parse

    write_images(tmp_path / "hr", ["a", "sub/b", "c"], (80, 72), seed=4)
    common = dict(source=str(tmp_path / "hr"), epochs=2, crop_size=64, shard_size=4, seed=3, progress=False)
    make_data(MakeDataConfig(out=str(tmp_path / "degraded"), **common))
    out = tmp_path / "captions.jsonl"
    args = ["--model", tiny_llava, "--max-length", 30, "--batch-size", 4, "--no-progress"]
    for index in range(2):  # two shards, dealt by record number
        assert run_caption(tmp_path / "degraded", out, "--num-shards", 2, "--shard-index", index, *args) == 0
    assert run_caption("--merge", out) == 0
    store = load_captions(out)
    keys = {f"{i}#{e}" for i in ("a", "sub/b", "c") for e in (0, 1)}
    assert set(store) == keys
    assert all(store[k][f] for k in keys for f in ("highlevel", "lowlevel", "highlevel_hr", "lowlevel_hr"))
    capsys.readouterr()
    assert run_caption(tmp_path / "degraded", out, "--model", tmp_path / "no-such-model", "--no-progress") == 0
    assert "captioned 0, already done 6" in capsys.readouterr().out  # resume: no model load

    summary = make_data(MakeDataConfig(out=str(tmp_path / "train"), captions=str(out), **common))
    assert summary["host_totals"]["captions"]["joined"] == 6
    before = [parse(r) for r in records_source(tmp_path / "degraded")]
    after = [parse(r) for r in records_source(tmp_path / "train")]
    for old, new in zip(before, after, strict=True):
        assert (old["id"], old["epoch"], old["lr"], old["hr"]) == (new["id"], new["epoch"], new["lr"], new["hr"])
        entry = store[f"{new['id']}#{new['epoch']}"]
        assert [new[f] for f in ("highlevel", "lowlevel", "highlevel_hr", "lowlevel_hr")] == \
            [entry[f] for f in ("highlevel", "lowlevel", "highlevel_hr", "lowlevel_hr")]


def test_caption_records_refuses_hr_only_and_unfinished_outputs(tmp_path, capsys):
    from xpsr_jax.data.make_data import MakeDataConfig, make_data

    write_images(tmp_path / "hr", ["a", "b", "c"], (80, 72), seed=5)
    make_data(MakeDataConfig(source=str(tmp_path / "hr"), out=str(tmp_path / "hr_only"), hr_only=True,
                             progress=False))
    out = tmp_path / "captions.jsonl"
    assert run_caption(tmp_path / "hr_only", out, "--model", tmp_path / "unused", "--no-progress") == 2
    assert "--hr-only" in capsys.readouterr().err
    make_data(MakeDataConfig(source=str(tmp_path / "hr"), out=str(tmp_path / "pairs"), crop_size=64, shard_size=1,
                             progress=False))
    next((tmp_path / "pairs/records").glob("train-00001-*")).unlink()  # an unfinished run
    assert run_caption(tmp_path / "pairs", out, "--model", tmp_path / "unused", "--no-progress") == 2
    assert "shards are missing" in capsys.readouterr().err
    assert run_caption(tmp_path / "pairs", out, "--hr-dir", tmp_path / "hr", "--no-progress") == 2
    assert "--hr-dir is for image folders" in capsys.readouterr().err
    assert not out.exists()


class _SizeRecorder:
    """A captioner that records the sizes of the images it is shown."""

    def __init__(self):
        self.sizes = []

    def caption(self, images):
        self.sizes += [im.size for im in images]
        return ["a caption"] * len(images)

    def describe(self):
        return {"model": "size recorder"}


def test_caption_records_with_quarter_size_lr_see_it_at_hr_size(tmp_path):
    """make-data --lr-size keeps the LR at 1/4; the captioner sees it upsampled to the HR size, as the official
    (upsampled) LR files and as training's condition image, so both layouts are described alike."""
    from xpsr_jax.captions.runner import CaptionJob, caption_folder
    from xpsr_jax.data.make_data import MakeDataConfig, make_data

    write_images(tmp_path / "hr", ["a", "b"], (80, 72), seed=6)
    make_data(MakeDataConfig(source=str(tmp_path / "hr"), out=str(tmp_path / "pairs"), crop_size=64, lr_size=16,
                             progress=False))
    seen = _SizeRecorder()
    result = caption_folder(CaptionJob(images=tmp_path / "pairs", out=tmp_path / "c.jsonl", progress=False),
                            captioners=(seen, seen))
    assert result.captioned == 2 and not result.problems
    assert seen.sizes == [(64, 64)] * 8  # 2 LR + 2 HR, once per pass (high, low)
    assert set(load_captions(tmp_path / "c.jsonl")) == {"a#0", "b#0"}

"""make-data (xpsr_jax/data/make_data.py and friends): end to end with workers, resume, host split, summaries,
captions, bad inputs, the tfds view of the output and a tfds source."""

import json
import shutil

import cv2
import numpy as np
import pytest

from xpsr_jax.cli import main as cli_main
from xpsr_jax.data import records
from xpsr_jax.data.caption_lookup import Captions, lookup, read_caption_jsonl
from xpsr_jax.data.images import ImageDecodeError
from xpsr_jax.data.make_data import MakeDataConfig, make_data
from xpsr_jax.data.shard_plan import ShardPlan
from xpsr_jax.data.synthetic import sample_photos


def write_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def _min_side(img, side):
    h, w = img.shape[:2]
    f = side / min(h, w)
    return img if f <= 1 else cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory):
    """4 photos (one under the crop size, one grayscale, one in a subfolder) and one truncated file."""
    root = tmp_path_factory.mktemp("hr")
    photos = [_min_side(p, 520) for p in sample_photos(4, max_side=600)]
    write_rgb(root / "a_big.png", photos[0])
    write_rgb(root / "sub" / "b_small.jpg", cv2.resize(photos[1], (300, 200), interpolation=cv2.INTER_AREA))
    assert cv2.imwrite(str(root / "c_gray.png"), cv2.cvtColor(photos[2], cv2.COLOR_RGB2GRAY))
    write_rgb(root / "d.webp", photos[3])
    data = (root / "a_big.png").read_bytes()
    (root / "e_broken.png").write_bytes(data[: len(data) // 3])
    return root


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    path = tmp_path_factory.mktemp("cap") / "captions.jsonl"
    lines = [{"id": "a_big", "highlevel": "a person", "lowlevel": "noisy", "highlevel_hr": "a person, sharp",
              "lowlevel_hr": "clean"},
             {"id": "sub/b_small", "highlevel": "a cat", "lowlevel": ""},
             {"id": "sub/b_small#0", "highlevel": "a cat", "lowlevel": "blurry copy 0"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture(scope="module")
def made(hr_dir, captions, tmp_path_factory):
    """One end-to-end run: 2 worker processes, shards of 2, captions."""
    out = tmp_path_factory.mktemp("made")
    summary = make_data(MakeDataConfig(source=str(hr_dir), out=str(out), workers=2, shard_size=2,
                                       captions=str(captions), seed=7, progress=False))
    return out, summary


def read_all(out):
    return [records.parse(r) for shard in records.list_shards(out) for r in _shard_records(shard)]


def _shard_records(shard):
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(shard))
    try:
        return reader.read_all()
    finally:
        reader.close()


def test_end_to_end_records_and_summary(made):
    out, s = made
    run = s["this_run"]
    assert (s["images"], s["items"], s["shards"], s["shards_written"]) == (5, 5, 3, 3)
    assert run["written"] == 4 and run["skipped"] == {"corrupt": 1}
    assert "e_broken.png" in run["skipped_files"][0]["message"]
    assert run["converted"] == {"gray": 1} and run["padded"] == 1
    assert run["captions"] == {"joined": 2, "missing": 2, "empty_fields": {"highlevel_hr": 1, "lowlevel_hr": 1}}
    assert s["dataset_complete"] and json.loads((out / "summary.json").read_text())["this_run"] == run

    recs = {r["id"]: r for r in read_all(out)}
    assert sorted(recs) == ["a_big", "c_gray", "d", "sub/b_small"]
    for r in recs.values():
        hr, lr = records.decode_png(r["hr"]), records.decode_png(r["lr"])
        assert hr.shape == lr.shape == (512, 512, 3)
        assert np.abs(hr.astype(int) - lr).mean() > 1  # degraded
        meta = json.loads(r["meta"])
        assert meta["seed"][0] == 7 and {"top", "left", "flip", "padded"} <= set(meta["crop"])
        assert {"kernel1", "draws", "stage1", "final"} <= set(meta["degradation"])
    assert recs["a_big"]["lowlevel"] == "noisy" and recs["a_big"]["lowlevel_hr"] == "clean"
    assert recs["sub/b_small"]["lowlevel"] == "blurry copy 0"  # the per-copy entry wins over the image's
    assert recs["d"]["highlevel"] == "" and recs["sub/b_small"]["source"].endswith("b_small.jpg")
    assert json.loads(recs["sub/b_small"]["meta"])["crop"]["padded"] is True
    assert json.loads(recs["c_gray"]["meta"])["notes"] == ["gray"]

    ds = records.tfds_builder(out).as_data_source(split="train")  # the tfds view, no TensorFlow
    assert len(ds) == 4 and ds[0]["hr"][:4] == b"\x89PNG"


def test_resume_rewrites_only_the_missing_shard_identically(made, hr_dir, captions, tmp_path):
    out0, _ = made
    out = tmp_path / "copy"
    shutil.copytree(out0, out)
    victim = records.records_dir(out) / records.shard_name(1, 3)
    before = victim.read_bytes()
    victim.unlink()
    with pytest.raises(ValueError, match="missing"):
        records.list_shards(out)
    # in-process this time: workers must not change the bytes
    s = make_data(MakeDataConfig(source=str(hr_dir), out=str(out), workers=0, shard_size=2,
                                 captions=str(captions), seed=7, progress=False))
    assert (s["shards_written"], s["shards_already_complete"]) == (1, 2)
    assert victim.read_bytes() == before
    assert s["host_totals"]["written"] == 4 and s["dataset_complete"]
    with pytest.raises(ValueError, match="seed: 7 there, 8 now"):
        make_data(MakeDataConfig(source=str(hr_dir), out=str(out), shard_size=2, captions=str(captions), seed=8,
                                 progress=False))


@pytest.mark.parametrize("images,epochs,size,hosts", [(5, 1, 2, 2), (7, 3, 4, 3), (10, 2, 100, 4), (1, 1, 1, 1)])
def test_host_split_covers_every_item_once(images, epochs, size, hosts):
    plan = ShardPlan(images, epochs, size)
    seen = [flat for h in range(hosts) for s in plan.host_shards(hosts, h) for flat in plan.shard_items(s)]
    assert sorted(seen) == list(range(images * epochs))
    assert sorted(plan.item(f) for f in seen) == [(e, i) for e in range(epochs) for i in range(images)]


def test_two_hosts_and_epochs(hr_dir, tmp_path):
    common = dict(source=str(hr_dir), out=str(tmp_path), epochs=2, shard_size=3, num_hosts=2, lr_size=128,
                  progress=False)
    s0 = make_data(MakeDataConfig(host_index=0, **common))
    assert not s0["dataset_complete"] and s0["tfds_metadata"] is None
    s1 = make_data(MakeDataConfig(host_index=1, **common))
    assert s1["dataset_complete"] and (tmp_path / "summary-host001-of-002.json").is_file()
    assert s0["host_totals"]["written"] + s1["host_totals"]["written"] == 8
    recs = read_all(tmp_path)
    assert sorted((r["id"], r["epoch"]) for r in recs) == sorted(
        (i, e) for e in (0, 1) for i in ["a_big", "c_gray", "d", "sub/b_small"])
    assert records.decode_png(recs[0]["lr"]).shape == (128, 128, 3)
    by_epoch = {(r["id"], r["epoch"]): r["hr"] for r in recs}
    assert by_epoch[("a_big", 0)] != by_epoch[("a_big", 1)]  # new crop and draws per copy


def test_hr_only_filters_duplicates_and_fail_mode(hr_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(hr_dir, src)
    shutil.copy(src / "d.webp", src / "d.png")  # same id "d": the later file is skipped
    s = make_data(MakeDataConfig(source=str(src), out=str(tmp_path / "o"), hr_only=True, min_pixels=250 * 250,
                                 progress=False))
    assert s["this_run"]["skipped"] == {"corrupt": 1, "duplicate_id": 1, "too_small": 1}
    recs = {r["id"]: r for r in read_all(tmp_path / "o")}
    assert sorted(recs) == ["a_big", "c_gray", "d"] and all(r["lr"] == b"" for r in recs.values())
    big = cv2.imread(str(src / "a_big.png"))[..., ::-1]
    np.testing.assert_array_equal(records.decode_png(recs["a_big"]["hr"]), big)  # whole image, untouched
    with pytest.raises(ImageDecodeError, match="e_broken.png"):
        make_data(MakeDataConfig(source=str(src), out=str(tmp_path / "f"), on_error="fail", progress=False))


def test_tfds_source_and_errors(made, tmp_path):
    out, _ = made
    data_dir = tmp_path / "tfds"
    shutil.copytree(records.records_dir(out), data_dir / records.DATASET_NAME / records.DATASET_VERSION)
    s = make_data(MakeDataConfig(source=records.DATASET_NAME, out=str(tmp_path / "o"), tfds_data_dir=str(data_dir),
                                 crop_size=256, progress=False))
    assert s["this_run"]["written"] == 4 and s["source"] == "tfds:xpsr_pairs:train"
    assert read_all(tmp_path / "o")[0]["id"] == "xpsr_pairs/train/00000000"
    with pytest.raises(RuntimeError, match="no_such_dataset_xyz.*network"):
        make_data(MakeDataConfig(source="tfds:no_such_dataset_xyz", out=str(tmp_path / "x"), progress=False))
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        make_data(MakeDataConfig(source=str(tmp_path / "Not A Folder"), out=str(tmp_path / "y")))


def test_cli(hr_dir, tmp_path, capsys):
    assert cli_main(["make-data", str(hr_dir), str(tmp_path), "--crop-size", "128", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "4 pairs written, 1 skipped" in printed and "dataset complete" in printed
    # OUT made with other settings: refused before any work, a usage error
    assert cli_main(["make-data", str(hr_dir), str(tmp_path), "--crop-size", "128", "--epochs", "2"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_caption_store_reader(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "x", "lowlevel": "  first line\\nsecond", "highlevel": null}\n\n'
                    '{"id": "x", "highlevel": "later fields update"}\n'
                    '{"id": "x#1", "lowlevel": "copy one"}\n[1, 2]\n{"id": "cut sh')
    (tmp_path / "c-shard-1-of-2.jsonl").write_text('{"id": "z", "lowlevel_hr": "from a shard"}\n')
    with pytest.warns(UserWarning, match="c.jsonl:5"):  # the broken line; the cut last line is dropped quietly
        store = read_caption_jsonl(path)
    assert store["x"] == Captions(lowlevel="first line", highlevel="later fields update")
    assert lookup(store, "x", 1).lowlevel == "copy one" and lookup(store, "x", 0).lowlevel == "first line"
    assert lookup(store, "y", 0) is None and store["z"].lowlevel_hr == "from a shard"
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_caption_jsonl(tmp_path / "nothing.jsonl")


def test_reads_what_the_caption_store_writes(tmp_path):
    store_mod = pytest.importorskip("xpsr_jax.captions.store")
    path = tmp_path / "captions.jsonl"
    with store_mod.CaptionStore.open(path, shard_index=0, num_shards=2) as st:
        st.add({"id": "a/0001", "highlevel": "a dog", "lowlevel": "noisy"})
        st.add({"id": "a/0001", "lowlevel_hr": "clean"})
    want = {k: Captions(**{f: v.get(f, "") for f in ("highlevel", "lowlevel", "highlevel_hr", "lowlevel_hr")})
            for k, v in store_mod.load_captions(path).items()}
    assert read_caption_jsonl(path) == want and want["a/0001"].lowlevel_hr == "clean"


def test_export_pairs_writes_the_stored_pngs(made, hr_dir, tmp_path, capsys):
    out, _ = made
    assert cli_main(["export-pairs", str(out), str(tmp_path / "png"), "--no-progress"]) == 0
    assert "exported 4 pairs" in capsys.readouterr().out
    recs = read_all(out)
    for rec in recs:  # one copy per image: plain ids; the bytes are the stored PNGs
        for side in ("lr", "hr"):
            assert (tmp_path / "png" / side.upper() / f"{rec['id']}.png").read_bytes() == rec[side]
    assert cli_main(["export-pairs", str(out), str(tmp_path / "copies"), "--per-copy-ids", "--no-progress"]) == 0
    assert sorted(p.relative_to(tmp_path / "copies/LR").as_posix() for p in (tmp_path / "copies/LR").rglob("*.png")) \
        == sorted(f"{r['id']}#0.png" for r in recs)
    make_data(MakeDataConfig(source=str(hr_dir), out=str(tmp_path / "hr_only"), hr_only=True, progress=False))
    assert cli_main(["export-pairs", str(tmp_path / "hr_only"), str(tmp_path / "x"), "--no-progress"]) == 1
    assert "--hr-only" in capsys.readouterr().err
    assert cli_main(["export-pairs", str(tmp_path / "nothing"), str(tmp_path / "y")]) == 1
    assert "no train-*.array_record shards" in capsys.readouterr().err

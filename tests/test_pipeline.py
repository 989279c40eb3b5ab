"""The grain input pipeline (xpsr_jax/data/pipeline.py): batches from make-data records, the 10 % HR-condition
swap, prompts and tokens, the split between processes, online degradation, epochs, and iterator checkpoints through
orbax (with and without worker processes)."""

import dataclasses
import hashlib

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from xpsr_jax.data import records
from xpsr_jax.data.degradation_config import DegradationConfig
from xpsr_jax.data.make_data import MakeDataConfig, make_data
from xpsr_jax.data.pipeline import PipelineConfig, build_dataset, make_iterator, records_source
from xpsr_jax.data.synthetic import SyntheticSource, sample_photos
from xpsr_jax.data.tokenizer import ClipTokenizer

ONE = dict(process_index=0, process_count=1)


@pytest.fixture(scope="module")
def tok():
    return ClipTokenizer.load()


@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory):
    import cv2

    root = tmp_path_factory.mktemp("hr")
    for i, photo in enumerate(sample_photos(3, max_side=300)):
        cv2.imwrite(str(root / f"p{i}.png"), photo[..., ::-1])
    return root


def take(it, n):
    return [next(it) for _ in range(n)]


def same(batches_a, batches_b):
    return len(batches_a) == len(batches_b) and all(
        a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(batches_a, batches_b))


def swapped(batch):
    """Rows whose condition is the HR image itself (a degraded LR is never within 1e-6 of it)."""
    return np.all(np.abs(batch["lr"] - (batch["hr"] + 1) / 2).reshape(len(batch["lr"]), -1) < 1e-6, axis=1)


def test_batches_from_records(hr_dir, tmp_path, tok):
    make_data(MakeDataConfig(source=str(hr_dir), out=str(tmp_path), shard_size=2, progress=False))
    cfg = PipelineConfig(batch_size=2, num_epochs=1, original_image_ratio=0.0)
    batches = take(make_iterator(records_source(tmp_path), cfg, **ONE), 1)
    b = batches[0]
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        "hr": ((2, 512, 512, 3), np.float32), "lr": ((2, 512, 512, 3), np.float32),
        "ids_high": ((2, 77), np.int32), "ids_low": ((2, 77), np.int32)}
    assert -1 <= b["hr"].min() < 0 < b["hr"].max() <= 1 and 0 <= b["lr"].min() and b["lr"].max() <= 1
    np.testing.assert_array_equal(b["ids_high"], np.repeat(tok([""]), 2, axis=0))  # official: "" every time
    assert not swapped(b).any()
    # the values are the stored PNGs, scaled
    stored = {records.decode_png(records.parse(r)["hr"]).tobytes() for r in records_source(tmp_path)}
    hr_u8 = np.rint((b["hr"] + 1) * 127.5).astype(np.uint8)
    assert {x.tobytes() for x in hr_u8} <= stored


def test_small_lr_records_are_upsampled(hr_dir, tmp_path):
    make_data(MakeDataConfig(source=str(hr_dir), out=str(tmp_path), crop_size=128, lr_size=32, progress=False))
    b = next(make_iterator(records_source(tmp_path), PipelineConfig(batch_size=3, original_image_ratio=0.0), **ONE))
    assert b["hr"].shape == b["lr"].shape == (3, 128, 128, 3)
    assert 0 <= b["lr"].min() and b["lr"].max() <= 1


def test_hr_condition_swap_statistics(tok):
    n, batch = 2000, 100
    src = SyntheticSource(n, image_size=8, seed=3)
    batches = take(make_iterator(src, PipelineConfig(batch_size=batch, num_epochs=1, seed=5), **ONE), n // batch)
    hr_prompt = tok(["clean and sharp"])[0]
    count = 0
    for b in batches:
        s = swapped(b)
        count += int(s.sum())
        is_hr_prompt = np.all(b["ids_low"] == hr_prompt, axis=1)
        np.testing.assert_array_equal(s, is_hr_prompt)  # the swap takes the HR-derived low-level prompt too
    assert abs(count - 0.1 * n) < 3.5 * np.sqrt(n * 0.1 * 0.9), count  # ~±47
    for ratio, want in ((0.0, 0), (1.0, 40)):
        b = next(make_iterator(SyntheticSource(40, 8), PipelineConfig(batch_size=40, original_image_ratio=ratio),
                               **ONE))
        assert swapped(b).sum() == want


def test_prompts_and_tokenization(tok):
    long = "very " * 100 + "long"
    src = [{"id": "a", "hr": np.zeros((8, 8, 3), np.uint8), "lr": np.ones((8, 8, 3), np.uint8), "highlevel": "lr cap",
            "lowlevel": long, "highlevel_hr": "", "lowlevel_hr": "x"},
           {"id": "b", "hr": np.zeros((8, 8, 3), np.uint8), "lr": np.ones((8, 8, 3), np.uint8), "highlevel": "lr cap",
            "lowlevel": "", "highlevel_hr": "hr cap", "lowlevel_hr": "x"}]
    cfg = PipelineConfig(batch_size=2, shuffle=False, original_image_ratio=0.0, highlevel_prompt="caption")
    b = next(make_iterator(src, cfg, **ONE))
    np.testing.assert_array_equal(b["ids_high"], tok(["lr cap", "hr cap"]))  # HR caption, else the LR one
    np.testing.assert_array_equal(b["ids_low"], tok([long, ""]))
    assert b["ids_low"][0, -1] == tok.eos_id and (b["ids_low"][0] != tok.pad_id).sum() == 76  # truncated to 77
    with pytest.raises(ValueError, match="highlevel_prompt"):
        PipelineConfig(highlevel_prompt="llava")


@pytest.mark.parametrize("shuffle", [False, True])
def test_process_shares_are_disjoint_and_equal(shuffle):
    src = SyntheticSource(11, image_size=8)
    shares = []
    for p in range(2):
        cfg = PipelineConfig(batch_size=1, num_epochs=1, shuffle=shuffle, original_image_ratio=0.0)
        it = make_iterator(src, cfg, process_index=p, process_count=2)
        shares.append([hashlib.sha1(b["hr"].tobytes()).hexdigest() for b in it])
    assert len(shares[0]) == len(shares[1]) == 5  # 11 -> 10 usable: equal shares keep processes in step
    assert not set(shares[0]) & set(shares[1]) and len(set(shares[0]) | set(shares[1])) == 10


def test_epochs_reshuffle():
    src = SyntheticSource(6, image_size=8)
    it = make_iterator(src, PipelineConfig(batch_size=1, num_epochs=2, original_image_ratio=0.0), **ONE)
    order = [hashlib.sha1(b["hr"].tobytes()).hexdigest() for b in it]
    assert len(order) == 12 and set(order[:6]) == set(order[6:]) and len(set(order)) == 6
    assert order[:6] != order[6:]


def test_online_degradation_from_hr_only():
    cfg = PipelineConfig(batch_size=2, online_degradation=True, original_image_ratio=0.0,
                         degradation=DegradationConfig(gt_size=64))
    b = next(make_iterator(SyntheticSource(4, image_size=80, hr_only=True), cfg, **ONE))
    assert b["hr"].shape == b["lr"].shape == (2, 64, 64, 3)
    assert not swapped(b).any()
    with pytest.raises(ValueError, match="--hr-only"):
        next(make_iterator(SyntheticSource(2, image_size=64), cfg, **ONE))
    with pytest.raises(ValueError, match="online_degradation=True"):
        next(make_iterator(SyntheticSource(2, 64, hr_only=True), dataclasses.replace(cfg, online_degradation=False),
                           **ONE))


def test_incomplete_records_refused(tmp_path):
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / records.shard_name(1, 2)).write_bytes(b"")
    with pytest.raises(ValueError, match="1 of 2 shards are missing"):
        records_source(tmp_path)


def _save(it, path):
    with ocp.CheckpointManager(path) as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()


def _restore(it, path):
    with ocp.CheckpointManager(path) as mngr:
        mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it)))
    return it


def test_checkpoint_restore_gives_the_same_next_batches(tmp_path):
    src = SyntheticSource(13, image_size=16)
    cfg = PipelineConfig(batch_size=3, seed=11)  # 4 batches per epoch: the restore point lies in epoch 2
    it = make_iterator(src, cfg, **ONE)
    take(it, 5)
    _save(it, tmp_path / "ckpt")
    want = take(it, 4)
    fresh = make_iterator(src, cfg, **ONE)
    assert not same(take(fresh, 4), want)
    assert same(take(_restore(make_iterator(src, cfg, **ONE), tmp_path / "ckpt"), 4), want)


def test_workers_same_batches_and_checkpoint(tmp_path):
    src = SyntheticSource(13, image_size=16)
    cfg = PipelineConfig(batch_size=3, seed=11, worker_count=2)
    plain = take(make_iterator(src, dataclasses.replace(cfg, worker_count=0), **ONE), 8)
    it = make_iterator(src, cfg, **ONE)
    try:
        assert same(take(it, 5), plain[:5])
        _save(it, tmp_path / "ckpt")
        assert same(take(it, 3), plain[5:])
    finally:
        it.close()
    restored = _restore(make_iterator(src, cfg, **ONE), tmp_path / "ckpt")
    try:
        assert same(take(restored, 3), plain[5:])
    finally:
        restored.close()


def test_build_dataset_is_a_grain_iter_dataset():
    ds = build_dataset(SyntheticSource(4, 8), PipelineConfig(batch_size=2), **ONE)
    assert isinstance(ds, grain.IterDataset)


_PIPELINE_PROBE = """
import sys
import threading
from etils import epy

entered, real = [], epy.lazy_imports
def spy(*args, **kwargs):
    entered.append(threading.current_thread().name)
    return real(*args, **kwargs)
epy.lazy_imports = spy
from xpsr_jax.data.pipeline import PipelineConfig, make_iterator, records_source
at_import, tfds_at_import = len(entered), "tensorflow_datasets" in sys.modules
it = make_iterator(records_source(sys.argv[1]), PipelineConfig(batch_size=2, num_threads=4, original_image_ratio=0.5),
                   process_index=0, process_count=1)
at_start = len(entered)
for _ in range(3):
    next(it)
print(int(tfds_at_import), at_start - at_import, len(entered) - at_start,
      sum(name != threading.main_thread().name for name in entered))
"""


def test_reader_threads_import_nothing_under_lazy_imports(hr_dir, tmp_path):
    """tfds imports parts of itself under etils' lazy_imports(), which swaps builtins.__import__ for every thread;
    a reader thread importing at that moment got a lazy stub and a training run died ("'LazyModule' object is not
    callable"). Importing the pipeline imports no tfds; building the iterator finishes tfds's imports in the main
    thread, before the reader threads start; the reader threads then enter no such block."""
    import subprocess
    import sys

    make_data(MakeDataConfig(source=str(hr_dir), out=str(tmp_path), crop_size=64, epochs=2, progress=False))
    proc = subprocess.run([sys.executable, "-c", _PIPELINE_PROBE, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tfds_at_import, at_start, while_reading, off_main_thread = map(int, proc.stdout.split()[-4:])
    assert tfds_at_import == 0  # importing the pipeline has no tfds side effect
    assert at_start > 0  # the probe sees tfds's blocks, run where the threads start, in the main thread
    assert while_reading == 0 and off_main_thread == 0

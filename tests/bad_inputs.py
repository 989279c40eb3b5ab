"""The inputs of tests/test_bad_inputs.py: each function builds, in a test's folder, what one table row feeds a
command (photos, broken checkpoints, earlier results, ...), and the checks some rows make of what the call wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


# ------------------------------------------------------------------------------------------------- inputs


def _png(path: Path, size: int = 16, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def photos(t: Path) -> None:
    _png(t / "photos" / "a.png")


def photos_and_out_file(t: Path) -> None:
    photos(t)
    (t / "out.png").write_bytes(b"an earlier result")


def photos_and_earlier_result(t: Path) -> None:
    photos(t)
    (t / "out").mkdir()
    (t / "out" / "a.png").write_bytes(b"an earlier result")


def corrupt_photo(t: Path) -> None:
    (t / "photos").mkdir()
    (t / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def photo_with_latin1_prompt(t: Path) -> None:
    photos(t)
    (t / "photos" / "a.txt").write_bytes("a caf\xe9 at night\n".encode("latin-1"))


def not_a_checkpoint(t: Path) -> None:
    photos(t)
    (t / "weights").mkdir()
    (t / "weights" / "notes.txt").write_text("not weights")


def nothing(t: Path) -> None:
    pass


def torch_ckpt_without_configs(t: Path) -> None:
    """An official checkpoint folder whose controlnet/ lacks its config.json."""
    for sub in ("unet", "controlnet"):
        (t / "ckpt" / sub).mkdir(parents=True)
    (t / "ckpt" / "unet" / "config.json").write_text("{}")
    (t / "ckpt" / "controlnet" / "notes.txt").write_text("no config.json here")


def torch_ckpt_with_bad_config(t: Path) -> None:
    for sub in ("unet", "controlnet"):
        (t / "ckpt" / sub).mkdir(parents=True)
        (t / "ckpt" / sub / "config.json").write_text(json.dumps({"block_out_channels": [32, 64]}))


def torch_ckpt_and_existing_out(t: Path) -> None:
    torch_ckpt_without_configs(t)
    (t / "flax").mkdir()
    (t / "flax" / "xpsr.json").write_text("{}")


def sd15_folder(t: Path) -> None:
    (t / "sd15" / "unet").mkdir(parents=True)
    (t / "sd15" / "unet" / "config.json").write_text("{}")


def sd15_and_existing_out(t: Path) -> None:
    sd15_folder(t)
    (t / "xpsr").mkdir()
    (t / "xpsr" / "xpsr.json").write_text("{\"earlier\": true}")


def exported_before(t: Path) -> None:
    (t / "torch" / "unet").mkdir(parents=True)
    (t / "torch" / "unet" / "config.json").write_text("{\"earlier\": true}")


def torch_txt(t: Path) -> None:
    (t / "torch.txt").write_text("someone's file")


def corrupt_hr_images(t: Path) -> None:
    (t / "hr").mkdir()
    for k in range(2):
        (t / "hr" / f"{k}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated" * (k + 1))


def hr_and_other_plan(t: Path) -> None:
    _png(t / "hr" / "a.png", 64)
    (t / "pairs").mkdir()
    (t / "pairs" / "plan.json").write_text(json.dumps({"epochs": 7, "seed": 3}))


def hr_file(t: Path) -> None:
    _png(t / "hr.png")


def hr_folder(t: Path) -> None:
    _png(t / "hr" / "a.png", 64)


def empty_images(t: Path) -> None:
    (t / "imgs").mkdir()


def official_prompts_latin1(t: Path) -> None:
    (t / "set" / "highlevel_prompt").mkdir(parents=True)
    (t / "set" / "highlevel_prompt" / "0001.txt").write_bytes("a caf\xe9\n".encode("latin-1"))


def photos_and_notes(t: Path) -> None:
    photos(t)
    (t / "notes.txt").write_text("my notes, not captions\n")


def official_prompts_and_photo(t: Path) -> None:
    photos(t)
    (t / "set" / "highlevel_prompt").mkdir(parents=True)
    (t / "set" / "highlevel_prompt" / "0001.txt").write_text("a red car\n")


def store_and_official_prompts(t: Path) -> None:
    (t / "set" / "highlevel_prompt").mkdir(parents=True)
    (t / "set" / "highlevel_prompt" / "0001.txt").write_text("a red car\n")
    (t / "c.jsonl").write_text(json.dumps({"id": "0001", "highlevel": "a blue bus"}) + "\n")


def sidecar_folder_without_text(t: Path) -> None:
    _png(t / "side" / "a.png")


def pred_and_gt(t: Path) -> None:
    _png(t / "pred" / "a.png")
    _png(t / "gt" / "a.png")


def pred_and_other_gt(t: Path) -> None:
    _png(t / "pred" / "a.png")
    _png(t / "gt" / "b.png")


def pred_gt_and_crops(t: Path) -> None:
    pred_and_gt(t)
    _png(t / "report" / "crops" / "a_sr.png")


def pred_gt_and_report(t: Path) -> None:
    pred_and_gt(t)
    (t / "report").mkdir()
    (t / "report" / "results.json").write_text("{\"earlier\": true}\n")


def empty_records(t: Path) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    from xpsr_jax.data import records

    folder = t / "pairs" / records.RECORDS_DIR
    folder.mkdir(parents=True)
    ArrayRecordWriter(str(folder / records.shard_name(0, 1)), records.WRITER_OPTIONS).close()


def one_pair(t: Path, name: str = "a") -> None:
    """A make-data output holding one LR/HR pair, written directly (no degradation run)."""
    import io

    from array_record.python.array_record_module import ArrayRecordWriter

    from xpsr_jax.data import records

    def png(size: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    folder = t / "pairs" / records.RECORDS_DIR
    folder.mkdir(parents=True)
    writer = ArrayRecordWriter(str(folder / records.shard_name(0, 1)), records.WRITER_OPTIONS)
    writer.write(records.serialize(records.PairRecord(id=name, epoch=0, source=name, hr_png=png(16),
                                                      lr_png=png(4))))
    writer.close()


def one_pair_and_file(t: Path) -> None:
    one_pair(t)
    (t / "png.txt").write_text("someone's file")


def one_pair_and_other_png(t: Path) -> None:
    one_pair(t)
    _png(t / "png" / "LR" / "a.png", 4, seed=5)  # an earlier export, or someone's file: other bytes


def hr_and_latin1_captions(t: Path) -> None:
    hr_folder(t)
    (t / "c.jsonl").write_bytes(b'{"id": "a", "highlevel": "caf\xe9"}\n')  # Latin-1, not UTF-8


def someones_folder(t: Path) -> None:
    (t / "mine").mkdir()
    (t / "mine" / "notes.txt").write_text("not the demo's")


def empty_folder(t: Path) -> None:
    (t / "pairs").mkdir()


def run_folder_and_file(t: Path) -> None:
    (t / "run").mkdir()
    (t / "exported.txt").write_text("someone's file")


def run_folder_and_out(t: Path) -> None:
    (t / "run").mkdir()
    (t / "exported").mkdir()
    (t / "exported" / "xpsr.json").write_text("{}")


# ------------------------------------------------------------------------------------------------- checks


def failed_json_lists(name: str):
    def check(t: Path) -> None:
        failed = json.loads((t / "out" / "failed.json").read_text())
        assert any(name in f["path"] for f in failed), failed

    return check


def not_marked_complete(t: Path) -> None:
    assert not list((t / "pairs").rglob("dataset_info.json"))
    assert not list((t / "pairs").rglob("*.array_record"))  # no empty shard a rerun would take as finished
    assert json.loads((t / "pairs" / "summary.json").read_text())["dataset_complete"] is False

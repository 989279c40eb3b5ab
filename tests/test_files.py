"""xpsr_jax.files: a file appears whole or not at all, and JSON is strict (a NaN is named, never written)."""

from __future__ import annotations

import json

import pytest


def test_atomic_json_refuses_nan_naming_the_key_and_keeps_the_old_file(tmp_path):
    from xpsr_jax.files import NonFiniteJSONError, atomic_write_json

    path = tmp_path / "report.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(NonFiniteJSONError, match=r"settings.guidance_scale is nan"):
        atomic_write_json(path, {"settings": {"guidance_scale": float("nan")}})
    with pytest.raises(NonFiniteJSONError, match=r"rows\[1\].psnr is inf"):
        atomic_write_json(path, {"rows": [{"psnr": 1.0}, {"psnr": float("inf")}]})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind


def test_atomic_open_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from xpsr_jax.files import atomic_open

    path = tmp_path / "image.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "wb") as f:
            f.write(b"half a new ")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]


def test_atomic_target_renames_only_a_finished_file(tmp_path):
    from xpsr_jax.files import atomic_target

    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(OSError):
        with atomic_target(path) as tmp:
            tmp.write_bytes(b"half")
            raise OSError("disk full")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    with atomic_target(path) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]

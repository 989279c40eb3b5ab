"""Bucket URLs given as paths are refused by name instead of becoming local folders called ``gs:``."""

import pytest

from xpsr_jax.cli import main as cli_main


def test_train_refuses_url_workdir_and_data_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--config", "xpsr_jax/configs/tiny.py", "--workdir", "gs://bucket/run"])
    assert e.value.code == 2
    assert "'gs://bucket/run': gs:// URLs are not supported" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"config.data.path 's3://b/pairs': s3:// URLs"):
        cli_main(["train", "--config", str(_tiny()), "--workdir", str(tmp_path / "run"),
                  "--config.data.path=s3://b/pairs"])
    with pytest.raises(SystemExit):
        cli_main(["export", "gs://bucket/run", str(tmp_path / "out")])
    assert not any(tmp_path.iterdir())  # nothing was written: no local "gs:" folder


def test_make_data_refuses_url_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["make-data", str(tmp_path), "gs://bucket/pairs"]) == 1
    assert "OUT 'gs://bucket/pairs': gs:// URLs are not supported" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _tiny():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "xpsr_jax" / "configs" / "tiny.py"

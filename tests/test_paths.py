"""xpsr_jax.paths decides what a path is: local, a gs:// bucket path (train, export, convert to-torch), or a URL
refused by name instead of becoming a local folder called ``gs:``. Nothing here talks to a bucket
(tests/test_gcs.py does, against an emulator)."""

import argparse
from pathlib import Path

import pytest

from xpsr_jax import paths
from xpsr_jax.cli import main as cli_main
from xpsr_jax.errors import UsageError

TINY = Path(__file__).resolve().parents[1] / "xpsr_jax" / "configs" / "tiny.py"


def test_as_path_local_bucket_and_refused_schemes():
    from etils import epath

    local = paths.as_path("runs/a")
    assert type(local) is type(Path("runs/a")) and local == Path("runs/a")
    bucket = paths.as_path("gs://bucket/run")
    assert isinstance(bucket, epath.Path) and not isinstance(bucket, Path)
    assert str(bucket / "checkpoints") == "gs://bucket/run/checkpoints"
    assert paths.as_path(bucket) is bucket
    assert paths.absolute("gs://bucket/run") == bucket  # epath's own absolute() would prefix the cwd
    assert paths.absolute("runs/a") == Path.cwd() / "runs/a"
    assert paths.is_gcs("gs://b") and not paths.is_gcs("gs:/b") and paths.scheme("S3://b") == "s3"
    with pytest.raises(paths.UnsupportedPathError, match=r"config.data.path 's3://b/x': s3:// URLs are not"):
        paths.as_path("s3://b/x", "config.data.path")


def test_argparse_types_name_the_url():
    assert paths.run_path("gs://b/run") == paths.as_path("gs://b/run")
    with pytest.raises(argparse.ArgumentTypeError, match="http:// URLs are not supported"):
        paths.run_path("http://host/run")
    with pytest.raises(argparse.ArgumentTypeError, match="gs:// URLs are not supported here.*gs:// works for: "
                                                         "train, export, convert to-torch"):
        paths.local_path("gs://b/out")
    assert paths.local_path("out/x") == Path("out/x")


def test_refuse_urls_on_commands_without_bucket_support():
    paths.refuse_urls("train", ["--workdir", "gs://b/run"])  # supported: nothing raised
    paths.refuse_urls("sr", ["in.png", "gs://b/out", "--weights", "gs://b/w"])  # the command checks its INPUTs
    with pytest.raises(UsageError, match=r"'gs://b/run': xpsr-jax study reads and writes local files only"):
        paths.refuse_urls("study", ["--workdir", "gs://b/run"])
    paths.refuse_urls("caption", ["images", "gs://b/c.jsonl"])  # the command itself refuses other schemes
    with pytest.raises(UsageError, match=r"'gs://b/pairs': xpsr-jax make-data"):
        paths.refuse_urls("make-data", ["hr", "--out=gs://b/pairs"])
    with pytest.raises(UsageError, match=r"xpsr-jax make-data writes local files only \(ArrayRecord's writer has "
                                         r"no GCS support\); write OUT locally, then copy it up"):
        paths.refuse_urls("make-data", ["hr", "gs://b/pairs"])


def test_emulator_host_reaches_tensorstore_and_array_record(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9")
    monkeypatch.delenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", raising=False)
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", "http://kept:1")
    paths.use_emulator_for_all_clients()
    import os

    assert os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] == "http://127.0.0.1:9"
    assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == "http://kept:1"  # a client's own setting wins


@pytest.mark.parametrize("argv, named", [(["caption", "images", "s3://b/c.jsonl"], "OUT 's3://b/c.jsonl'"),
                                         (["caption", "--merge", "s3://b/c.jsonl"], "OUT 's3://b/c.jsonl'"),
                                         (["caption", "gs://b/images", "c.jsonl"], "IMAGES 'gs://b/images'"),
                                         (["caption", "--import-sidecar", "s3://b/txt", "gs://b/c.jsonl"],
                                          "--import-sidecar 's3://b/txt'")])
def test_caption_takes_gs_for_out_only(argv, named, tmp_path, capsys, monkeypatch):
    """caption's OUT may be gs:// (tests/test_gcs_captions.py); its inputs are local, and other schemes are
    refused by name before anything is read or written."""
    monkeypatch.chdir(tmp_path)
    assert cli_main(argv) == 2
    assert named in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_local_output_is_the_folder_itself_when_local(tmp_path):
    with paths.local_output(tmp_path / "out") as folder:
        assert folder == tmp_path / "out"


def test_outputs_compare_bucket_paths_as_written():
    from xpsr_jax.outputs import refuse_over_inputs

    with pytest.raises(UsageError, match="lies inside the input WORKDIR gs://b/run"):
        refuse_over_inputs("gs://b/run/export", [("WORKDIR", "gs://b/run")])
    refuse_over_inputs("gs://b/export", [("WORKDIR", "gs://b/run"), ("LOCAL", "gs:/b/export")])


def test_train_and_export_refuse_unsupported_schemes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--config", str(TINY), "--workdir", "s3://bucket/run"])
    assert e.value.code == 2
    assert "'s3://bucket/run': s3:// URLs are not supported" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"config.data.path 's3://b/pairs': s3:// URLs"):
        cli_main(["train", "--config", str(TINY), "--workdir", str(tmp_path / "run"),
                  "--config.data.path=s3://b/pairs"])
    with pytest.raises(SystemExit):
        cli_main(["export", "s3://bucket/run", str(tmp_path / "out")])
    assert not any(tmp_path.iterdir())  # nothing was written: no local "s3:" folder


@pytest.mark.parametrize("argv", [["make-data", "hr", "gs://bucket/pairs"],
                                  ["sr", "gs://bucket/in.png", "out", "--weights", "w"],
                                  ["eval", "gs://bucket/pred", "gt", "--out", "report"],
                                  ["convert", "to-torch", "gs://bucket/flax", "gs://bucket/torch"]])
def test_commands_without_bucket_support_refuse_gs_by_name(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = cli_main(argv)
    except SystemExit as e:  # an argparse type refused it
        code = e.code
    assert code == 2
    assert "gs://bucket/" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

"""Caption stores in a bucket, against the local GCS emulator (tests/gcs_emulator.py): ``xpsr-jax caption IMAGES
gs://...`` with the tiny random LLaVA gives the bytes a local run gives and resumes from the bucket; shards and
``--merge`` work in the bucket; imports upload once; the staging copy is uploaded every ``upload_records`` /
``upload_seconds``, so a reader sees the records uploaded so far; readers see what other hosts uploaded since."""

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from gcs_fixtures import BUCKET, emulator, gcs_env  # noqa: F401 - fixtures

from xpsr_jax.captions import store as store_mod
from xpsr_jax.captions.store import CaptionStore, load_captions, read_meta, shard_paths
from xpsr_jax.cli import main as cli_main
from xpsr_jax.paths import as_path



@pytest.fixture
def prefix(gcs_env, request) -> str:
    """A folder of the bucket for this test alone (the emulator is shared by the module)."""
    return f"gs://{BUCKET}/{request.node.name}"


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    from xpsr_jax.captions.tiny import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def write_images(folder: Path, names, size, seed) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{name}.png")


def _key(url: str) -> str:
    """``gs://bucket/x`` -> ``bucket/x``, as gcsfs names objects."""
    return url.removeprefix("gs://")


def _other_host():
    """A gcsfs client of its own, with no cached listings: writes as another host would."""
    import gcsfs

    return gcsfs.GCSFileSystem(skip_instance_cache=True)


def _caption(*argv) -> int:
    return cli_main(["caption", *map(str, argv)])


def test_caption_into_a_bucket_equals_a_local_run_and_resumes(tiny_llava, prefix, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a bucket URL taken as a local path would show up here as gs:/
    write_images(tmp_path / "lr", ["0001", "0002", "sub/0003"], (24, 20), seed=1)
    write_images(tmp_path / "hr", ["0001", "0002", "sub/0003"], (48, 40), seed=2)
    common = ["--hr-dir", tmp_path / "hr", "--model", tiny_llava, "--max-length", 30, "--batch-size", 2,
              "--no-progress"]
    local, url = tmp_path / "captions.jsonl", f"{prefix}/c/captions.jsonl"
    assert _caption(tmp_path / "lr", local, *common) == 0
    assert _caption(tmp_path / "lr", url, *common) == 0
    assert f"captioned 3, already done 0, problems 0 -> {url}" in capsys.readouterr().out
    assert as_path(url).read_bytes() == local.read_bytes()  # the same records, in the same order
    assert load_captions(url) == load_captions(local)
    [run] = read_meta(url)["runs"]
    assert run["highlevel"] == read_meta(local)["runs"][0]["highlevel"]

    write_images(tmp_path / "lr", ["0004"], (24, 20), seed=3)
    write_images(tmp_path / "hr", ["0004"], (48, 40), seed=4)
    assert _caption(tmp_path / "lr", url, *common) == 0  # resumes from the bucket's records
    assert "captioned 1, already done 3" in capsys.readouterr().out
    assert sorted(load_captions(url)) == ["0001", "0002", "0004", "sub/0003"]
    assert len(read_meta(url)["runs"]) == 2
    before = as_path(url).read_bytes()
    assert _caption(tmp_path / "lr", url, "--model", tmp_path / "no-such-model", "--no-progress") == 0
    assert "captioned 0, already done 4" in capsys.readouterr().out  # no model load, nothing uploaded
    assert as_path(url).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.jsonl", "captions.jsonl.meta.json", "hr", "lr"]

    assert _caption(tmp_path / "lr", f"{prefix}/c", *common) == 2  # objects under it: a folder
    assert f"OUT {prefix}/c is a folder" in capsys.readouterr().err
    _other_host().pipe(_key(f"{prefix}/notes.txt"), b"not a caption store\n")
    assert _caption(tmp_path / "lr", f"{prefix}/notes.txt", *common) == 2
    assert "is not a caption store" in capsys.readouterr().err
    assert _caption(tmp_path / "lr", url, "--hr-dir", f"{prefix}/hr", "--no-progress") == 2
    assert f"--hr-dir '{prefix}/hr': gs:// URLs are not supported here" in capsys.readouterr().err


def test_two_shards_and_merge_in_the_bucket(tiny_llava, prefix, tmp_path, capsys):
    names = ["0001", "0002", "0003"]
    write_images(tmp_path / "lr", names, (24, 20), seed=5)
    url = f"{prefix}/captions.jsonl"
    common = ["--model", tiny_llava, "--max-length", 30, "--batch-size", 2, "--no-progress"]
    for index in range(2):
        assert _caption(tmp_path / "lr", url, "--num-shards", 2, "--shard-index", index, *common) == 0
    shards = shard_paths(url)
    assert [str(p) for p in shards] == [f"{prefix}/captions-shard-{i}-of-2.jsonl" for i in range(2)]
    assert not as_path(url).exists()
    assert sorted(load_captions(url)) == names  # the shards are read with the store
    assert CaptionStore.open(shards[0], merge_shards=False).done_ids() == {"0001", "0003"}

    capsys.readouterr()
    assert _caption("--merge", url) == 0
    assert f"merged 2 shard files into {url} (3 records)" in capsys.readouterr().out
    assert shard_paths(url) == [] and not as_path(f"{shards[0]}.meta.json").exists()
    assert sorted(load_captions(url)) == names
    assert [r["id"] for r in map(json.loads, as_path(url).read_text().splitlines())] == names  # one sorted file
    assert [run["shard"] for run in read_meta(url)["runs"]] == [[0, 2], [1, 2]]


def test_import_into_the_bucket_uploads_once(prefix, tmp_path, capsys, monkeypatch):
    for rel, text in {"highlevel_prompt/0001.txt": "A red house.\n", "lowlevel_prompt_q/0001.txt": "Blurry.\n",
                      "highlevel_prompt/0002.txt": "A dog."}.items():
        (tmp_path / "set" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "set" / rel).write_text(text, encoding="utf-8")
    uploads, upload = [], store_mod.upload_file

    def counted(src, dst):
        uploads.append(str(dst))
        upload(src, dst)

    monkeypatch.setattr(store_mod, "upload_file", counted)
    url, local = f"{prefix}/imported.jsonl", tmp_path / "imported.jsonl"
    assert _caption("--import-official", tmp_path / "set", url) == 0
    assert uploads == [url]
    assert _caption("--import-official", tmp_path / "set", local) == 0
    assert as_path(url).read_bytes() == local.read_bytes()

    (tmp_path / "set/highlevel_prompt/0002.txt").write_text("A cat.", encoding="utf-8")
    capsys.readouterr()
    assert _caption("--import-official", tmp_path / "set", url) == 2  # would replace a caption the bucket holds
    assert f"OUT {url} already holds records for '0002'" in capsys.readouterr().err
    assert _caption("--import-official", tmp_path / "set", url, "--overwrite") == 0
    assert load_captions(url)["0002"]["highlevel"] == "A cat."
    assert _caption("--import-sidecar", f"{prefix}/texts", url) == 2
    assert f"--import-sidecar '{prefix}/texts': gs:// URLs are not supported here" in capsys.readouterr().err


def test_bucket_store_uploads_every_n_records_and_t_seconds(prefix, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the staging copy lives
    url = f"{prefix}/captions.jsonl"
    seen = lambda: CaptionStore.open(url).done_ids()  # noqa: E731  (a reader on another host)

    store = CaptionStore.open(url)
    store.upload_seconds, store.upload_records = None, 2
    store.add_run_meta({"run": 1})
    store.add({"id": "a", "highlevel": "one"})
    assert seen() == set() and not as_path(f"{url}.meta.json").exists()  # the sidecar goes up after the records
    store.add({"id": "b"})  # the second record: uploaded
    store.upload_seconds, store.upload_records = 1.0, None
    store.add({"id": "c"})  # right after that upload: waits
    assert seen() == {"a", "b"} and read_meta(url)["runs"] == [{"run": 1}]
    time.sleep(1.0)
    store.add({"id": "d"})  # a second after the last upload: uploaded
    assert seen() == {"a", "b", "c", "d"}
    store.add({"id": "a", "lowlevel": "sharp"})
    store.close()
    assert load_captions(url)["a"] == {"id": "a", "highlevel": "one", "lowlevel": "sharp"}
    assert list(tmp_path.iterdir()) == []  # the staging copy is gone


def test_bucket_store_is_seeded_from_the_object_and_a_torn_line_cut(prefix):
    url = f"{prefix}/captions.jsonl"
    _other_host().pipe(_key(url), b'{"id": "a", "highlevel": "one"}\n{"id": "b", "highle')
    with CaptionStore.open(url) as store:
        assert store.done_ids() == {"a"}
        store.add({"id": "c", "highlevel": "three"})
    assert as_path(url).read_text().splitlines() == ['{"id": "a", "highlevel": "one"}',
                                                     '{"id": "c", "highlevel": "three"}']


def test_readers_see_what_other_hosts_uploaded_since(prefix):
    """gcsfs caches listings and object sizes for the life of the process; a store opened again reads afresh."""
    url = f"{prefix}/captions.jsonl"
    with CaptionStore.open(url) as store:
        store.add({"id": "a"})
    assert load_captions(url).keys() == {"a"}  # the folder is listed (and cached) here
    other = _other_host()
    other.pipe(_key(url), b'{"id": "a"}\n{"id": "b"}\n')  # a longer object: a cached size would cut it
    other.pipe(_key(f"{prefix}/captions-shard-1-of-2.jsonl"), b'{"id": "s"}\n')
    assert load_captions(url).keys() == {"a", "b", "s"}


class _BucketWatcher:
    """A captioner that notes how many records a reader of the bucket store sees before each batch."""

    def __init__(self, url):
        self.url, self.seen = url, []

    def caption(self, images):
        self.seen.append(len(CaptionStore.open(self.url)))
        return ["a caption"] * len(images)

    def describe(self):
        return {"model": "bucket watcher"}


def test_a_caption_run_uploads_as_it_goes(prefix, tmp_path, monkeypatch):
    from xpsr_jax.captions.runner import CaptionJob, caption_folder

    write_images(tmp_path / "lr", ["0001", "0002", "0003"], (16, 16), seed=6)
    monkeypatch.setattr(CaptionStore, "upload_records", 1)
    url = f"{prefix}/captions.jsonl"
    high, low = _BucketWatcher(url), _BucketWatcher(url)
    result = caption_folder(CaptionJob(images=tmp_path / "lr", out=as_path(url), batch_size=1, progress=False),
                            captioners=(high, low))
    assert result.captioned == 3 and str(result.written_to) == url
    assert high.seen == [0, 1, 2]  # every record was in the bucket before the next batch started
    assert sorted(load_captions(url)) == ["0001", "0002", "0003"]

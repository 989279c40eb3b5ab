"""Cached encoder outputs (make-data --cache-latents): the stored HR posteriors and prompt embeddings, the loss they
give next to the online VAE/CLIP path, the batches the training loop builds from them, resume, and the refusals.

One tiny make-data run (4 photos x 2 copies at 64 px, the tiny preset's checkpoint) serves the module; the only
programs compiled are the tiny VAE encoder and text encoder (make-data) and one forward loss of both paths.
"""

import dataclasses
import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xpsr_jax import testing
from xpsr_jax.cli import main as cli_main
from xpsr_jax.data import records
from xpsr_jax.data.cache_check import CacheMissingError, check_cached_data
from xpsr_jax.data.embeddings import EmbeddingStore, MissingEmbeddingError, store_dir, training_prompts
from xpsr_jax.data.make_data import MakeDataConfig, make_data
from xpsr_jax.data.pipeline import PipelineConfig, make_iterator, records_source
from xpsr_jax.data.synthetic import sample_photos
from xpsr_jax.data.tokenizer import ClipTokenizer

ONE = dict(process_index=0, process_count=1)
BF16_ROUNDING = 2.0 ** -8  # relative error of one round to bfloat16 (8 significant bits)
R = testing.RESOLUTION


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """HR photos, a caption store with a low-level prompt per copy, the tiny random checkpoint."""
    from xpsr_jax.infer.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("cache-inputs")
    hr = root / "hr"
    hr.mkdir()
    for i, photo in enumerate(sample_photos(4, max_side=2 * R)):
        assert cv2.imwrite(str(hr / f"p{i}.png"), np.ascontiguousarray(photo[..., ::-1]))
    lines = [{"id": f"p{i}#{e}", "highlevel": f"photo {i}", "lowlevel": f"blurry copy {e} of {i}",
              "lowlevel_hr": f"sharp photo {i}"} for i in range(4) for e in range(2)]
    captions = root / "captions.jsonl"
    captions.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return hr, captions, make_tiny_checkpoint(root / "tiny-ckpt")


def _make_args(hr, out, captions, *extra):
    return ["make-data", str(hr), str(out), "--crop-size", str(R), "--epochs", "2", "--shard-size", "4",
            "--captions", str(captions), "--no-progress", *extra]


@pytest.fixture(scope="module")
def cached(inputs, tmp_path_factory):
    """make-data through the CLI with --cache-latents: 8 pairs in 2 shards, encoder batches of 3 (one padded)."""
    hr, captions, ckpt = inputs
    out = tmp_path_factory.mktemp("cached")
    assert cli_main(_make_args(hr, out, captions, "--cache-latents", "--weights", str(ckpt), "--cache-batch",
                               "3")) == 0
    return out


@pytest.fixture(scope="module")
def plain(inputs, tmp_path_factory):
    hr, captions, _ = inputs
    out = tmp_path_factory.mktemp("plain")
    assert cli_main(_make_args(hr, out, captions)) == 0
    return out


@pytest.fixture(scope="module")
def params(inputs):
    from xpsr_jax.weights import checkpoint

    return checkpoint.load(inputs[2])[1]


def _all_records(out):
    from array_record.python.array_record_module import ArrayRecordReader

    recs = []
    for shard in records.list_shards(out):
        reader = ArrayRecordReader(str(shard))
        recs += [records.parse(r) for r in reader.read_all()]
        reader.close()
    return recs


def test_records_hold_the_hr_posterior_and_the_store_every_prompt(cached, params):
    from xpsr_jax.models.clip_text import ClipTextModel
    from xpsr_jax.models.vae import encode_distribution

    recs = _all_records(cached)
    assert len(recs) == 8 and all(r["latent_moments"].dtype == jnp.bfloat16 for r in recs)
    hr = np.stack([records.decode_png(r["hr"]) for r in recs])
    mean, logvar = encode_distribution(params["vae"], hr.transpose(0, 3, 1, 2) / 127.5 - 1.0, testing.vae_config())
    want = np.concatenate([mean, logvar], axis=1).transpose(0, 2, 3, 1)  # (8, 8, 8, 8): mean, then logvar
    got = np.stack([r["latent_moments"] for r in recs]).astype(np.float32)
    assert got.shape == (8, R // 8, R // 8, 8)
    np.testing.assert_allclose(got, want, rtol=BF16_ROUNDING, atol=1e-6)
    assert np.abs(got[..., 4:]).max() > 0.05  # a real log-variance, not zeros

    store = EmbeddingStore.open(store_dir(cached))
    wanted = {p for r in recs for p in training_prompts(r, "empty")}
    assert "" in wanted and "sharp photo 3" in wanted and "blurry copy 1 of 2" in wanted
    assert wanted <= set(store.index) and len(store) == len(wanted)  # the HR captions are not needed in "empty"
    texts = ["", "sharp photo 3"]
    ref = ClipTextModel(testing.text_config()).apply({"params": params["text_encoder"]},
                                                    ClipTokenizer.load()(texts))
    got = np.stack([store[t] for t in texts]).astype(np.float32)
    np.testing.assert_allclose(got, np.asarray(ref), rtol=BF16_ROUNDING, atol=1e-6)
    with pytest.raises(MissingEmbeddingError, match="'never stored'.*embeddings"):
        store["never stored"]


def test_cached_loss_equals_the_online_loss_on_the_same_batch(cached, params):
    """Same parameters, batch and key: the step's loss from the stored posterior and embeddings matches the loss with
    the VAE encoder and text encoder run in the step, each term within one bfloat16 rounding (the tiny config
    computes in fp32, so storage is the only difference; averaged over the batch it is far smaller, ~5e-6 here, while
    decoding the posterior mean instead of a sample moves the total by ~5e-3 and the latent DFC terms by ~4e-2); the
    cached path runs without the encoders' parameters at all."""
    from helpers import tiny_train_config
    from xpsr_jax.train import models
    from xpsr_jax.train.loss import xpsr_loss

    c = tiny_train_config()
    nets = models.build(c.model, c.compute_dtype)
    online_cfg = c.loss
    cached_cfg = c.loss.copy_and_resolve_references()
    cached_cfg.unlock()
    cached_cfg.latents, cached_cfg.text = "precomputed", "precomputed"

    # ratio 0.5: both low-level prompts of the HR-condition branch and the LR branch occur in the batch
    pipe = PipelineConfig(batch_size=8, num_epochs=1, original_image_ratio=0.5, seed=3)
    online = next(make_iterator(records_source(cached), pipe, **ONE))
    stored = next(make_iterator(records_source(cached), dataclasses.replace(
        pipe, cached_latents=True, embeddings=str(store_dir(cached))), **ONE))
    np.testing.assert_array_equal(online["hr"], stored["hr"])
    np.testing.assert_array_equal(online["lr"], stored["lr"])
    assert sorted(stored) == ["emb_high", "emb_low", "hr", "latent_moments", "lr"]
    swapped = np.all(np.abs(stored["lr"] - (stored["hr"] + 1) / 2) < 1e-6, axis=(1, 2, 3))
    assert 0 < swapped.sum() < 8  # both branches, so both low-level prompts of a record are looked up

    @jax.jit
    def both(params, online, stored, rng):
        denoiser_only = {k: params[k] for k in ("unet", "controlnet")}
        return (xpsr_loss(nets, params, online, rng, online_cfg),
                xpsr_loss(nets, denoiser_only, stored, rng, cached_cfg))

    want, got = jax.device_get(both(params, online, stored, jax.random.key(11)))
    for name, w, g in zip(want._fields, want, got):
        assert np.isfinite(w) and w > 0, name
        np.testing.assert_allclose(g, w, rtol=BF16_ROUNDING, err_msg=name)


def test_the_training_loop_feeds_what_the_step_takes(cached):
    """``make_data_iterator`` of a config asking for both caches gives exactly ``batch_spec``'s keys, shapes and
    dtypes (no compile)."""
    from helpers import tiny_train_config
    from xpsr_jax.data.cache_check import check_run_config
    from xpsr_jax.train.loop import make_data_iterator
    from xpsr_jax.train.trainer import batch_spec

    c = tiny_train_config()
    c.data.source, c.data.path = "records", str(cached)
    c.loss.latents = c.loss.text = "precomputed"
    check_run_config(c)
    batch = next(make_data_iterator(c))
    spec = batch_spec(c)
    assert {k: (v.shape, np.dtype(v.dtype)) for k, v in batch.items()} == {
        k: (s.shape, np.dtype(s.dtype)) for k, s in spec.items()}


def test_resume_rewrites_a_missing_shard_and_its_embeddings_identically(inputs, cached, tmp_path, capsys):
    import shutil

    hr, captions, ckpt = inputs
    out = tmp_path / "again"
    shutil.copytree(cached, out)
    shard = records.list_shards(out)[1]
    part = out / "embeddings" / shard.name.removesuffix(records.SHARD_SUFFIX)
    before = {p: p.read_bytes() for p in (shard, part.with_suffix(".npy"), part.with_suffix(".json"))}
    for p in before:
        p.unlink()
    # the stored plan names the checkpoint and the encoder batch (XLA's convolutions at another batch size round
    # differently: one bfloat16 latent per record moved by one step in an earlier version of this test): a resume
    # with another batch, or without the cache, is refused; the same command resumes
    assert cli_main(_make_args(hr, out, captions, "--cache-latents", "--weights", str(ckpt))) == 2
    assert "'batch': 3" in capsys.readouterr().err
    assert cli_main(_make_args(hr, out, captions, "--cache-latents", "--weights", str(ckpt), "--cache-batch",
                               "3")) == 0
    assert [p.name for p, b in before.items() if p.read_bytes() != b] == []
    assert cli_main(_make_args(hr, out, captions)) == 2


def test_records_without_a_cache_are_refused_by_name(plain, cached, tmp_path, capsys):
    def train(path, *overrides):
        return cli_main(["train", "--config", "tiny", "--workdir", str(tmp_path / "w"),
                         "--config.data.source=records", f"--config.data.path={path}", *overrides])

    assert train(plain, "--config.loss.latents=precomputed") == 2
    err = capsys.readouterr().err
    first_shard = str(records.list_shards(plain)[0])
    assert first_shard in err and "no cached latents" in err and "--cache-latents" in err
    assert train(plain, "--config.loss.text=precomputed") == 2
    err = capsys.readouterr().err
    assert str(store_dir(plain)) in err and "no prompt-embedding store" in err
    assert train(cached, "--config.loss.latents=precomputed", "--config.data.resolution=128") == 2
    err = capsys.readouterr().err
    assert "cached latents of shape (8, 8, 8)" in err and "need (16, 16, 8)" in err
    # a store made for the empty high-level prompt cannot serve the captions
    with pytest.raises(CacheMissingError, match="no embedding of the prompt 'photo 0'"):
        check_cached_data(str(cached), latents=False, text=True, highlevel_prompt="caption")
    assert not (tmp_path / "w").exists()  # refused before anything was set up

    # the input pipeline names the record (a dataset only partly cached would get this far)
    it = make_iterator(records_source(plain), PipelineConfig(batch_size=2, cached_latents=True), **ONE)
    with pytest.raises(ValueError, match=r"record 'p\d' holds no cached latents"):
        next(it)


def test_make_data_cache_flags_are_checked_first(inputs, tmp_path, capsys):
    hr, captions, ckpt = inputs
    out = tmp_path / "o"
    assert cli_main(_make_args(hr, out, captions, "--cache-latents")) == 2
    assert "--cache-latents needs --weights" in capsys.readouterr().err
    assert cli_main(_make_args(hr, out, captions, "--cache-latents", "--weights", str(hr))) == 2
    assert "not an xpsr-jax Flax checkpoint" in capsys.readouterr().err
    assert cli_main(["make-data", str(hr), str(out), "--hr-only", "--cache-latents", "--weights", str(ckpt)]) == 2
    assert "--hr-only" in capsys.readouterr().err
    assert not out.exists()

"""Before a run that reads cached encoder outputs starts (before any compile): do the records hold them, in the
shapes the run's model needs, and does the embedding store hold the prompts? Each refusal names the path and what
is missing.

Cheap by design: the first record of each shard and the store's index are read, not the whole dataset; a record
further on that lacks its cache is still refused by the input pipeline, naming the record.
"""

from __future__ import annotations

from pathlib import Path

from xpsr_jax.data import records
from xpsr_jax.data.embeddings import EmbeddingStore, store_dir, training_prompts
from xpsr_jax.errors import UsageError

REMAKE = "make them with xpsr-jax make-data ... --cache-latents --weights W"


class CacheMissingError(UsageError, ValueError):
    """A run asks for cached encoder outputs its data does not hold; the message names the path."""


def embeddings_path(data_path: str, embeddings: str = "") -> Path:
    """The store a run reads: ``embeddings`` if given, else the make-data output's own ``embeddings/``."""
    return Path(embeddings) if embeddings else store_dir(data_path)


def check_cached_data(data_path: str, *, latents: bool, text: bool, embeddings: str = "",
                      latent_shape: tuple[int, int, int] | None = None, text_shape: tuple[int, int] | None = None,
                      highlevel_prompt: str = "empty") -> None:
    """Raise :class:`CacheMissingError` unless the records at ``data_path`` hold HR posteriors of
    ``latent_shape`` (h, w, 2C) (when ``latents``) and the store holds (tokens, width) = ``text_shape`` embeddings
    of the prompts of those records (when ``text``)."""
    firsts = []
    for shard in records.list_shards(data_path):
        data = records.read_first(shard)
        if data is not None:
            firsts.append((shard, records.parse(data)))
    if latents:
        for shard, rec in firsts:
            moments = rec["latent_moments"]
            if moments is None:
                raise CacheMissingError(f"{shard}: the records hold no cached latents (record {rec['id']!r} has no "
                                        f"latent_moments); {REMAKE}, or set config.loss.latents='vae_sample'")
            if latent_shape is not None and tuple(moments.shape) != tuple(latent_shape):
                raise CacheMissingError(f"{shard}: cached latents of shape {tuple(moments.shape)}, the run's VAE and "
                                        f"resolution need {tuple(latent_shape)} (h, w, 2 x latent channels)")
    if text:
        folder = embeddings_path(data_path, embeddings)
        try:
            store = EmbeddingStore.open(folder)
        except FileNotFoundError:
            raise CacheMissingError(f"{folder}: no prompt-embedding store for the records at {data_path}; {REMAKE}, "
                                    "or set config.loss.text='encoder'") from None
        if text_shape is not None and tuple(store.shape) != tuple(text_shape):
            raise CacheMissingError(f"{folder}: prompt embeddings of shape {store.shape}, the run's text encoder "
                                    f"gives {tuple(text_shape)}")
        for shard, rec in firsts:
            for prompt in training_prompts(rec, highlevel_prompt):
                if prompt not in store:
                    shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
                    raise CacheMissingError(f"{folder}: no embedding of the prompt {shown!r} of record {rec['id']!r} "
                                            f"in {shard} (highlevel_prompt={highlevel_prompt!r}; the store must be "
                                            "made with the same --highlevel-prompt)")


def check_run_config(config) -> None:
    """:func:`check_cached_data` for a training config (``loss.latents``/``loss.text`` = "precomputed")."""
    latents = config.loss.latents == "precomputed"
    text = config.loss.get("text", "encoder") == "precomputed"
    if not (latents or text):
        return
    where = "config.loss.latents='precomputed'" if latents else "config.loss.text='precomputed'"
    if config.data.source != "records":
        raise CacheMissingError(f"{where} reads cached encoder outputs from make-data records; "
                                f"config.data.source={config.data.source!r} has none")
    from xpsr_jax.train import models

    vae = models.vae_config(config.model)
    h = config.data.resolution // vae.downsample_factor
    check_cached_data(config.data.path, latents=latents, text=text, embeddings=config.data.get("embeddings", ""),
                      latent_shape=(h, h, 2 * vae.latent_channels),
                      text_shape=(77, models.text_config(config.model).hidden_size),
                      highlevel_prompt="caption" if config.model.highlevel_prompt == "caption" else "empty")

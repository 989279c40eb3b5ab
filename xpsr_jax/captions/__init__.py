"""The offline MLLM caption pass (transformers, PyTorch) and the caption store the data builder reads.

``store`` (JSONL records keyed by image id, shards, merge, metadata sidecar), ``official`` (readers for the
official prompt folders and sidecar text files), ``prompts`` (XPSR's instructions and post-processing),
``llava`` (batched LLaVA generation), ``images`` (image ids of a folder tree), ``runner`` (the resumable,
sharded pass), ``tiny`` (a random tiny LLaVA built offline), ``cli`` (the ``xpsr-jax caption`` subcommand).

The store and the readers need only the standard library; torch and transformers are imported on use.
"""

from .store import FIELDS, CaptionStore, load_captions, merge_shards

__all__ = ["FIELDS", "CaptionStore", "load_captions", "merge_shards"]

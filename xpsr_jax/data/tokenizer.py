"""CLIP's byte-level BPE tokenizer, offline, producing SD1.5's fixed-length (N, 77) id arrays.

The vocabulary is derived from CLIP's merge list (``xpsr_jax/assets/bpe_simple_vocab_16e6.txt.gz``, bundled) or
read from a diffusers ``tokenizer/`` folder (``vocab.json`` + ``merges.txt``). The text pipeline is the one of
transformers' ``CLIPTokenizer`` (which the SD pipelines use), rebuilt on the ``tokenizers`` library:

* normalise: Unicode NFC, every whitespace run -> one space, lowercase;
* split into words: the special tokens, the English contractions ``'s 't 're 've 'm 'll 'd``, letter runs, single
  digits, runs of other non-space characters; whitespace is dropped;
* each word -> UTF-8 bytes -> printable stand-in characters -> BPE with ``</w>`` marking the word's end.

Then ``[BOS] + ids[:75] + [EOS]`` padded with the pad id (EOS for SD1.5) to 77.

Why not ``transformers.CLIPTokenizer(vocab_file=...)``: in transformers 5 that keyword is silently ignored and the
tokenizer maps everything to unknown ids. Building the BPE model from vocab/merges objects avoids that trap.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
BOS_ID = 49406
EOS_ID = 49407
MAX_LENGTH = 77
BUNDLED_BPE = Path(__file__).resolve().parents[1] / "assets" / "bpe_simple_vocab_16e6.txt.gz"

# CLIP keeps only the first merges of the file: its vocabulary is 49408 = 2 x 256 byte symbols + these merges + the
# two special tokens.
_CLIP_NUM_MERGES = 49152 - 256 - 2
_END_OF_WORD = "</w>"
_WORD_SPLIT = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)

Merges = list[tuple[str, str]]


def byte_symbols() -> list[str]:
    """The 256 single-character stand-ins of the byte values, in vocabulary order (index = token id).

    Printable Latin-1 bytes stand for themselves and come first, in byte order; the other 68 bytes (controls,
    space, ...) follow in byte order, mapped to code points 256, 257, ... so that no symbol is whitespace.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    kept = set(printable)
    others = [b for b in range(256) if b not in kept]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def vocab_from_merges(merges: Merges) -> dict[str, int]:
    """CLIP's vocabulary: byte symbols, byte symbols + ``</w>``, one token per merge, then BOS and EOS."""
    symbols = byte_symbols()
    tokens = symbols + [s + _END_OF_WORD for s in symbols] + [a + b for a, b in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("CLIP BPE: the merge list produces duplicate tokens")
    return vocab


def _parse_merges(lines: Sequence[str], source: str) -> Merges:
    merges = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#version"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source}: merge line {n} is not two symbols: {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def read_bpe_file(path: str | os.PathLike = BUNDLED_BPE) -> tuple[dict[str, int], Merges]:
    """CLIP's ``bpe_simple_vocab_16e6.txt(.gz)`` -> (vocab, merges). Its first line is a header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = _parse_merges(lines[1 : 1 + _CLIP_NUM_MERGES], str(path))
    if len(merges) != _CLIP_NUM_MERGES:
        raise ValueError(f"{path}: {len(merges)} merges, CLIP needs {_CLIP_NUM_MERGES}")
    return vocab_from_merges(merges), merges


def read_tokenizer_folder(folder: str | os.PathLike) -> tuple[dict[str, int], Merges]:
    """A ``tokenizer/`` folder -> (vocab, merges): ``vocab.json`` + ``merges.txt`` (diffusers, transformers 4), or
    else the BPE model inside ``tokenizer.json`` (all that transformers 5's ``save_pretrained`` writes)."""
    folder = Path(folder)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if vocab_file.is_file() and merges_file.is_file():
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        merges = _parse_merges(merges_file.read_text(encoding="utf-8").split("\n"), str(merges_file))
        return vocab, merges
    if (folder / "tokenizer.json").is_file():
        model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("model", {})
        if model.get("type") != "BPE":
            raise ValueError(f"CLIP tokenizer: {folder / 'tokenizer.json'} holds no BPE model")
        # tokenizers writes merges as ["a", "b"] pairs; older versions wrote "a b" strings.
        lines = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
        return model["vocab"], _parse_merges(lines, str(folder / "tokenizer.json"))
    raise FileNotFoundError(f"CLIP tokenizer: {folder} has neither vocab.json + merges.txt nor tokenizer.json")


def build_backend(vocab: dict[str, int], merges: Merges) -> Tokenizer:
    """The ``tokenizers`` pipeline described in the module docstring, without special-token insertion."""
    tok = Tokenizer(
        BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix=_END_OF_WORD,
            fuse_unk=False, unk_token=EOS_TOKEN)
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # invert=True keeps the matches as words and drops what lies between them (whitespace).
            pre_tokenizers.Split(Regex(_WORD_SPLIT), behavior="removed", invert=True),
            # ByteLevel's own GPT-2 split is kept as transformers has it: it leaves CLIP's words whole except a
            # special token's name in other letter cases ("<|EndOfText|>"), which it cuts into "<|", name, "|>".
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    # Written literally in a prompt, the special tokens map to their ids (as in transformers) rather than to BPE.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (BOS_TOKEN, EOS_TOKEN)])
    return tok


class ClipTokenizer:
    """texts -> (N, max_length) int32 ids: ``[BOS] + tokens[:max_length-2] + [EOS] + [pad]*``.

    >>> ClipTokenizer.load()(["a photo of a cat"])[0, :7]
    array([49406,   320,  1125,   539,   320,  2368, 49407], dtype=int32)
    """

    def __init__(self, backend: Tokenizer, max_length: int = MAX_LENGTH, pad_token: str = EOS_TOKEN):
        if max_length < 2:
            raise ValueError(f"max_length must leave room for BOS and EOS, got {max_length}")
        self.backend = backend
        self.max_length = max_length
        self.bos_id = self._id(BOS_TOKEN)
        self.eos_id = self._id(EOS_TOKEN)
        self.pad_id = self._id(pad_token)

    def _id(self, token: str) -> int:
        i = self.backend.token_to_id(token)
        if i is None:
            raise ValueError(f"CLIP tokenizer: {token!r} is not in the vocabulary")
        return i

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, max_length: int = MAX_LENGTH) -> "ClipTokenizer":
        """``None``: the bundled CLIP vocabulary. A folder: see :func:`read_tokenizer_folder` (a diffusers model
        folder's ``tokenizer/`` is found too); its ``tokenizer_config.json`` may name another pad token.
        A file: CLIP's ``bpe_simple_vocab_16e6.txt(.gz)``."""
        if path is None:
            return cls(build_backend(*read_bpe_file(BUNDLED_BPE)), max_length)
        path = Path(path)
        if path.is_file():
            return cls(build_backend(*read_bpe_file(path)), max_length)
        own_files = ("vocab.json", "tokenizer.json")
        if (path / "tokenizer").is_dir() and not any((path / f).is_file() for f in own_files):
            path = path / "tokenizer"
        if not path.is_dir():
            raise FileNotFoundError(f"CLIP tokenizer: {path} is neither a BPE file nor a tokenizer folder")
        return cls(build_backend(*read_tokenizer_folder(path)), max_length, _pad_token_of(path))

    def encode(self, text: str) -> list[int]:
        """One text -> its BPE ids without BOS/EOS, untruncated."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """texts (N,) -> ids (N, max_length) int32; longer texts are cut so that EOS stays last."""
        if isinstance(texts, str):
            raise TypeError("ClipTokenizer takes a list of texts; wrap a single text in a list")
        out = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int32)
        body = self.max_length - 2
        for row, enc in enumerate(self.backend.encode_batch(list(texts), add_special_tokens=False)):
            ids = enc.ids[:body]
            out[row, 0] = self.bos_id
            out[row, 1 : 1 + len(ids)] = ids
            out[row, 1 + len(ids)] = self.eos_id
        return out


def _pad_token_of(folder: Path) -> str:
    """The pad token a tokenizer folder declares (SD1.5: ``<|endoftext|>``; SD2 folders use ``!``)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = folder / name
        if f.is_file():
            pad = json.loads(f.read_text(encoding="utf-8")).get("pad_token")
            if isinstance(pad, dict):  # AddedToken written out as a dict
                pad = pad.get("content")
            if isinstance(pad, str):
                return pad
    return EOS_TOKEN

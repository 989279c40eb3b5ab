"""The offline CLIP tokenizer against transformers' ``CLIPTokenizer`` built from the same vocabulary and merges.

In transformers 5, ``CLIPTokenizerFast`` is the same class as ``CLIPTokenizer`` (both run on ``tokenizers``), so one
oracle covers both names; it is built from vocab/merges objects and from a saved folder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import CLIPTokenizer, CLIPTokenizerFast

from xpsr_jax.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    MAX_LENGTH,
    ClipTokenizer,
    byte_symbols,
    read_bpe_file,
    read_tokenizer_folder,
)

TRICKY = [
    "a photo of a cat",
    "A PHOTO of a Cat, in the Rain!!!",
    "",
    "   ",
    "  leading and trailing   spaces\t\tand\ttabs\nand newlines  ",
    "it's they'll I'M we'd you've don't o'clock ''quoted''",
    "1234567890 3.14159 -42 1e-3 2,000,000 ½ ² ٣",
    "hello,world...(parenthesised) [brackets] {braces} <angles> a/b\\c #hash @at $5 %d ^_^ ~tilde `tick`",
    "Café naïve résumé coöperate Ångström façade",
    "Cafe\u0301 composed by combining accent",  # NFC folds e + U+0301 into é
    "emoji 😀🐱‍👤👍🏽 flags 🇫🇷 hearts ❤️",
    "日本語のテキスト 中文 한국어 русский текст ελληνικά עברית العربية",
    "zero\u200bwidth non\u00a0breaking\u3000ideographic space",
    "control\x00chars\x07and\x1fmore",
    "<|startoftext|>literal specials<|endoftext|> and <|ENDOFTEXT|> in caps",
    "high-resolution, sharp, detailed photo, 8k, masterpiece, best quality, ultra-detailed",
    "word " * 100,  # 100 tokens: truncated to 75
    "supercalifragilisticexpialidocious antidisestablishmentarianism " * 10,
    "😀" * 60,  # each emoji is several byte tokens: truncation inside multi-byte BPE
]


@pytest.fixture(scope="module")
def vocab_merges():
    return read_bpe_file()


@pytest.fixture(scope="module")
def ours() -> ClipTokenizer:
    return ClipTokenizer.load()


@pytest.fixture(scope="module")
def oracle(vocab_merges) -> CLIPTokenizer:
    vocab, merges = vocab_merges
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _oracle_ids(tok, texts) -> np.ndarray:
    enc = tok(list(texts), padding="max_length", max_length=MAX_LENGTH, truncation=True)
    return np.asarray(enc["input_ids"], dtype=np.int32)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory, vocab_merges):
    """A diffusers SD1.5-style model folder with tokenizer/{vocab.json, merges.txt, tokenizer_config.json}."""
    vocab, merges = vocab_merges
    tok = tmp_path_factory.mktemp("sd") / "tokenizer"
    tok.mkdir()
    (tok / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tok / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", "utf-8")
    (tok / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|endoftext|>", "model_max_length": 77}))
    return tok.parent


def test_known_ids(ours):
    ids = ours(["a photo of a cat"])
    assert ids.shape == (1, 77) and ids.dtype == np.int32
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[0, 7:] == 49407).all()


def test_vocabulary(vocab_merges, ours):
    vocab, merges = vocab_merges
    assert len(vocab) == 49408 and len(merges) == 48894
    assert sorted(vocab.values()) == list(range(49408))
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (BOS_ID, EOS_ID) == (ours.bos_id, ours.eos_id)
    symbols = byte_symbols()
    assert len(set(symbols)) == 256 and not any(s.isspace() for s in symbols)
    assert vocab["a</w>"] == 320 and vocab["!"] == 0


@pytest.mark.parametrize("cls", [CLIPTokenizer, CLIPTokenizerFast])
def test_matches_transformers_on_tricky_strings(ours, vocab_merges, cls):
    vocab, merges = vocab_merges
    oracle = cls(vocab=vocab, merges=merges)
    got, want = ours(TRICKY), _oracle_ids(oracle, TRICKY)
    for text, g, w in zip(TRICKY, got, want):
        assert g.tolist() == w.tolist(), text


def test_text_by_text_equals_batch(ours):
    batch = ours(TRICKY)
    for text, row in zip(TRICKY, batch):
        np.testing.assert_array_equal(ours([text])[0], row)


def test_truncation_keeps_eos(ours):
    text = "word " * 100
    full = ours.encode(text)
    assert len(full) == 100
    ids = ours([text])[0]
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert ids[1:-1].tolist() == full[:75]


def test_exactly_full_and_one_over(ours):
    """75 content tokens fill the row exactly; 76 lose the last one."""
    fits = ours(["word " * 75])[0]
    assert fits[-1] == EOS_ID and (fits[1:-1] == ours.encode("word")[0]).all()
    over = ours(["word " * 75 + "cat"])[0]
    np.testing.assert_array_equal(over, fits)


def test_padding_and_empty(ours):
    ids = ours(["", "cat"])
    assert ids[0].tolist() == [BOS_ID] + [EOS_ID] * 76
    assert ids[1, :3].tolist() == [BOS_ID, 2368, EOS_ID] and (ids[1, 3:] == EOS_ID).all()
    assert ours([]).shape == (0, 77)


def test_case_and_whitespace_insensitive(ours):
    np.testing.assert_array_equal(ours(["A  Photo\tOF\na CAT "]), ours(["a photo of a cat"]))


def test_diffusers_folder(ours, sd_folder):
    from_model = ClipTokenizer.load(sd_folder)  # the model folder: tokenizer/ is found
    from_tok = ClipTokenizer.load(sd_folder / "tokenizer")
    want = ours(TRICKY)
    np.testing.assert_array_equal(from_model(TRICKY), want)
    np.testing.assert_array_equal(from_tok(TRICKY), want)
    # transformers reading the same folder agrees as well
    np.testing.assert_array_equal(_oracle_ids(CLIPTokenizer.from_pretrained(sd_folder / "tokenizer"), TRICKY), want)


def test_transformers5_saved_folder(ours, oracle, tmp_path):
    """transformers 5 saves only tokenizer.json (+ tokenizer_config.json); its BPE model is read from there."""
    oracle.save_pretrained(tmp_path)
    assert not (tmp_path / "vocab.json").exists()
    vocab, merges = read_tokenizer_folder(tmp_path)
    assert (vocab, merges) == read_bpe_file()
    np.testing.assert_array_equal(ClipTokenizer.load(tmp_path)(TRICKY), ours(TRICKY))


def test_pad_token_from_folder_config(sd_folder, tmp_path):
    """SD2-style tokenizer folders pad with "!" (id 0) instead of EOS."""
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((sd_folder / "tokenizer" / name).read_bytes())
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "!"}}))
    ids = ClipTokenizer.load(tmp_path)(["cat"])[0]
    assert ids[:3].tolist() == [BOS_ID, 2368, EOS_ID] and (ids[3:] == 0).all()


def test_bpe_file_path_and_errors(tmp_path):
    from xpsr_jax.data.tokenizer import BUNDLED_BPE

    assert ClipTokenizer.load(BUNDLED_BPE)(["cat"])[0, 1] == 2368
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ClipTokenizer.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        ClipTokenizer.load(tmp_path)
    with pytest.raises(TypeError, match="list"):
        ClipTokenizer.load()("a single string")
    bad = tmp_path / "bad.txt"
    bad.write_text("header\na b c\n")
    with pytest.raises(ValueError, match="line 1"):
        read_bpe_file(bad)

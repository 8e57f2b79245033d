"""Finding and writing CLIP tokenizer files offline (no transformers needed)."""

from __future__ import annotations

import gzip
import json

import pytest

from ip2p.errors import IP2PError
from ip2p.formats import tokenizer as clip_tokenizer
from ip2p.formats.tokenizer import (
    ENV_TOKENIZER,
    bytes_to_unicode,
    clip_vocab_from_bpe_list,
    find_tokenizer_dir,
    synthetic_clip_vocab,
    tokenizer_from_open_clip,
    write_synthetic_clip_tokenizer,
)


@pytest.fixture(autouse=True)
def no_installed_vocabularies(monkeypatch, tmp_path):
    """Each test decides which sources exist: no env var, no comfy, no open_clip, a private cache."""
    monkeypatch.delenv(ENV_TOKENIZER, raising=False)
    monkeypatch.setenv("IP2P_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(clip_tokenizer, "_package_dir", lambda name: None)


def fake_bpe_list(path, n_pairs=49000):
    """A BPE list shaped like OpenAI's: a header line, then merge pairs (by default more than CLIP uses)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    pairs = [f"{letters[i % 26]}{i} {letters[(i * 7) % 26]}" for i in range(n_pairs)]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(['"bpe_simple_vocab_16e6.txt#version: 0.2', *pairs]))
    return path


def test_byte_table_covers_every_byte_once():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256


def test_byte_tokens_put_printable_characters_first_as_clip_does():
    tokens = list(bytes_to_unicode().values())
    assert tokens[0] == "!"
    assert tokens.index("a") == 64  # "a</w>" is id 256 + 64 = 320 in CLIP's vocabulary


def test_synthetic_vocabulary_has_clips_special_ids():
    vocab, merges = synthetic_clip_vocab()
    assert len(vocab) == 49408
    assert vocab.index("<|startoftext|>") == 49406
    assert vocab.index("<|endoftext|>") == 49407
    assert all("".join(pair) in vocab for pair in merges)


def test_small_synthetic_vocabulary_keeps_specials_last():
    vocab, _ = synthetic_clip_vocab(1000)
    assert len(vocab) == 1000
    assert vocab[-2:] == ["<|startoftext|>", "<|endoftext|>"]


def test_clip_vocabulary_is_derived_from_the_bpe_list(tmp_path):
    vocab, merges = clip_vocab_from_bpe_list(fake_bpe_list(tmp_path / "bpe.txt.gz"))
    assert len(merges) == 48894
    assert len(vocab) == 49408
    assert vocab[512] == "".join(merges[0])
    assert vocab[-2:] == ["<|startoftext|>", "<|endoftext|>"]


def test_short_bpe_list_is_refused(tmp_path):
    with pytest.raises(IP2PError, match="not a CLIP BPE list"):
        clip_vocab_from_bpe_list(fake_bpe_list(tmp_path / "bpe.txt.gz", n_pairs=10))


def test_derived_tokenizer_is_cached_and_complete(tmp_path):
    bpe = fake_bpe_list(tmp_path / "bpe.txt.gz")
    folder = tokenizer_from_open_clip(bpe)
    assert folder.is_relative_to(tmp_path / "cache")
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["<|endoftext|>"] == 49407
    assert (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[0] == "#version: 0.2"
    assert tokenizer_from_open_clip(bpe) == folder
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folders left


def test_model_folder_tokenizer_comes_first(tmp_path, monkeypatch):
    model = tmp_path / "model"
    write_synthetic_clip_tokenizer(model / "tokenizer", 1000)
    monkeypatch.setenv(ENV_TOKENIZER, str(tmp_path / "elsewhere"))
    assert find_tokenizer_dir(model) == model / "tokenizer"


def test_env_variable_is_used(tmp_path, monkeypatch):
    folder = write_synthetic_clip_tokenizer(tmp_path / "tok", 1000)
    monkeypatch.setenv(ENV_TOKENIZER, str(folder))
    assert find_tokenizer_dir() == folder


def test_env_variable_naming_an_empty_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_TOKENIZER, str(tmp_path))
    with pytest.raises(IP2PError, match=ENV_TOKENIZER):
        find_tokenizer_dir()


def test_comfyuis_bundled_tokenizer_is_found(tmp_path, monkeypatch):
    write_synthetic_clip_tokenizer(tmp_path / "comfy" / "sd1_tokenizer", 1000)
    monkeypatch.setattr(clip_tokenizer, "_package_dir", lambda name: tmp_path / name if name == "comfy" else None)
    assert find_tokenizer_dir() == tmp_path / "comfy" / "sd1_tokenizer"


def test_open_clip_vocabulary_is_converted_when_nothing_else_exists(tmp_path, monkeypatch):
    fake_bpe_list((tmp_path / "open_clip").mkdir() or tmp_path / "open_clip" / "bpe_simple_vocab_16e6.txt.gz")
    monkeypatch.setattr(clip_tokenizer, "_package_dir", lambda name: tmp_path / name if name == "open_clip" else None)
    folder = find_tokenizer_dir()
    assert (folder / "vocab.json").is_file()


def test_no_vocabulary_anywhere_says_how_to_get_one():
    with pytest.raises(IP2PError, match=r"pip install --no-deps open_clip_torch.*IP2P_CLIP_TOKENIZER"):
        find_tokenizer_dir()

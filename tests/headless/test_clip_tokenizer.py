"""The CLIP tokenizer files we write load in transformers and tokenize as CLIP does."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest

from ip2p.errors import IP2PError
from ip2p.formats.tokenizer import (
    OPEN_CLIP_BPE,
    load_clip_tokenizer,
    tokenizer_from_open_clip,
    write_synthetic_clip_tokenizer,
)
from ip2p.headless.export import save_tokenizer

WHEELS = Path("/work/wheels")  # a developer machine's local wheel cache, used when open_clip is not installed


@pytest.fixture(scope="module")
def open_clip_bpe(tmp_path_factory) -> Path:
    """OpenAI's BPE list from the installed open_clip package, or from its wheel."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / OPEN_CLIP_BPE
        if installed.is_file():
            return installed
    for wheel in sorted(WHEELS.glob("open_clip_torch-*.whl")):
        target = tmp_path_factory.mktemp("open_clip")
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(f"open_clip/{OPEN_CLIP_BPE}", target)
        return target / "open_clip" / OPEN_CLIP_BPE
    pytest.skip("open_clip_torch is not installed (pip install --no-deps open_clip_torch)")


@pytest.fixture(scope="module")
def real_clip(open_clip_bpe, tmp_path_factory):
    return load_clip_tokenizer(tokenizer_from_open_clip(open_clip_bpe, tmp_path_factory.mktemp("clip") / "tok"))


def test_derived_vocabulary_tokenizes_like_openai_clip(real_clip):
    # The ids CLIP ViT-L/14's tokenizer gives (start, "a", "photo", "of", "a", "cat", end).
    assert real_clip("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_derived_vocabulary_has_clips_size_and_padding(real_clip):
    assert len(real_clip) == 49408
    padded = real_clip("make it snow", padding="max_length", max_length=real_clip.model_max_length).input_ids
    assert len(padded) == 77
    assert padded[-1] == real_clip.pad_token_id == 49407


def test_synthetic_tokenizer_loads_with_clip_special_ids(tmp_path):
    tokenizer = load_clip_tokenizer(write_synthetic_clip_tokenizer(tmp_path / "tok"))
    ids = tokenizer("make the cat red").input_ids
    assert (ids[0], ids[-1]) == (49406, 49407)
    assert len(ids) == 6  # each known word is one token


def test_saved_tokenizer_reloads_identically(tmp_path, real_clip):
    folder = save_tokenizer(real_clip, tmp_path / "saved")
    again = load_clip_tokenizer(folder)
    text = "Turn him into a cyborg, 1984-style!"
    assert again(text).input_ids == real_clip(text).input_ids


def test_a_folder_that_states_no_padding_length_pads_to_clips_77_and_saves_77(tmp_path):
    folder = write_synthetic_clip_tokenizer(tmp_path / "tok")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["model_max_length"]  # transformers would then say 1e30 ("unlimited")
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer = load_clip_tokenizer(folder)
    assert tokenizer.model_max_length == 77
    assert load_clip_tokenizer(save_tokenizer(tokenizer, tmp_path / "saved")).model_max_length == 77


def test_folder_saved_by_transformers_alone_loads(tmp_path, real_clip):
    real_clip.save_pretrained(tmp_path / "hf")  # transformers 5 writes tokenizer.json, no vocab.json
    assert load_clip_tokenizer(tmp_path / "hf")("a photo of a cat").input_ids == real_clip("a photo of a cat").input_ids


def test_folder_without_vocabulary_is_refused(tmp_path):
    with pytest.raises(IP2PError, match="vocab.json and merges.txt"):
        load_clip_tokenizer(tmp_path)

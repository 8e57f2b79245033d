"""The toy model in one original-layout file: its architecture and its tokenizer come back.

A single file carries weights and our metadata (configs, and which tokenizer to rebuild), never the
tokenizer itself: the toy vocabulary is named ``"toy"`` there and rebuilt at load; a tokenizer that
cannot be named is refused at save, pointing to the diffusers folder.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ip2p.errors import IP2PError
from ip2p.formats.checkpoint import META_KEY, read_ip2p_metadata
from ip2p.formats.tokenizer import load_clip_tokenizer, write_synthetic_clip_tokenizer, write_tokenizer_files
from ip2p.formats.toy_vocab import toy_vocab
from ip2p.headless.editor import EditSettings, edit
from ip2p.headless.export import save_single_file
from ip2p.headless.loading import load_edit_model

INSTRUCTION = "make the red circle blue"


@pytest.fixture(scope="module")
def loaded(toy_single_file):
    return load_edit_model(toy_single_file)


def test_the_metadata_names_the_toy_tokenizer(toy_single_file):
    assert read_ip2p_metadata(toy_single_file)["tokenizer"] == "toy"


def test_a_toy_single_file_loads_with_the_toy_tokenizer(toy_model, loaded):
    assert loaded.extra["tokenizer_source"] == "toy"
    assert loaded.tokenizer.get_vocab() == toy_model.tokenizer.get_vocab()
    assert loaded.tokenizer(INSTRUCTION).input_ids == toy_model.tokenizer(INSTRUCTION).input_ids
    assert len(loaded.tokenizer(INSTRUCTION).input_ids) == len(INSTRUCTION.split()) + 2  # one token a word


def test_a_toy_single_file_keeps_the_toy_architecture(loaded):
    unet, vae, text = loaded.unet.config, loaded.vae.config, loaded.text_encoder.config
    assert (tuple(unet.block_out_channels), unet.norm_num_groups, unet.sample_size) == ((32, 64, 128), 8, 16)
    assert (tuple(vae.block_out_channels), vae.norm_num_groups) == ((32, 64, 64), 8)
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (128, 2, 1024)


def test_a_toy_single_file_holds_the_same_weights(toy_model, loaded):
    for name in ("unet", "vae", "text_encoder"):
        original, again = getattr(toy_model, name).state_dict(), getattr(loaded, name).state_dict()
        assert original.keys() == again.keys()
        assert all(torch.equal(original[key], again[key]) for key in original), name


def test_a_toy_single_file_edits_exactly_as_the_original(toy_model, loaded):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    settings = EditSettings(INSTRUCTION, steps=2, sampler="euler_ancestral", seed=5)
    torch.testing.assert_close(
        edit(loaded, image, settings, progress=False), edit(toy_model, image, settings, progress=False), rtol=0, atol=0
    )


def test_a_toy_model_loaded_from_a_folder_still_names_its_tokenizer(toy_diffusers_dir, tmp_path):
    path = save_single_file(load_edit_model(toy_diffusers_dir), tmp_path / "toy.safetensors")
    assert read_ip2p_metadata(path)["tokenizer"] == "toy"


def test_the_tiny_models_synthetic_tokenizer_is_still_named(tiny_single_file):
    assert read_ip2p_metadata(tiny_single_file)["tokenizer"] == "synthetic:1000"


def test_a_tokenizer_a_single_file_cannot_name_is_refused_at_save(tiny_model, tmp_path):
    write_synthetic_clip_tokenizer(tmp_path / "tokenizer", 600)  # not the text encoder's 1000 tokens
    model = dataclasses.replace(tiny_model, tokenizer=load_clip_tokenizer(tmp_path / "tokenizer"))
    with pytest.raises(IP2PError, match="diffusers folder"):
        save_single_file(model, tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()


def test_the_toy_vocabulary_at_another_size_is_not_taken_for_the_toy_tokenizer(toy_model, tmp_path):
    vocab, merges = toy_vocab(1100)
    model = dataclasses.replace(
        toy_model, tokenizer=load_clip_tokenizer(write_tokenizer_files(tmp_path / "tokenizer", vocab, merges))
    )
    with pytest.raises(IP2PError, match="1100 tokens, text encoder vocabulary 1024"):
        save_single_file(model, tmp_path / "model.safetensors")


def test_a_tokenizer_record_this_version_does_not_know_is_refused_at_load(toy_single_file, tmp_path):
    metadata = read_ip2p_metadata(toy_single_file)
    metadata["tokenizer"] = "klingon"
    path = tmp_path / "future.safetensors"
    save_file(load_file(str(toy_single_file)), str(path), metadata={META_KEY: json.dumps(metadata)})
    with pytest.raises(IP2PError, match="'klingon'.*Update comfyui-ip2p"):
        load_edit_model(path)

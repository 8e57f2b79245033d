"""The toy world's model: its architecture, its vocabulary, its VAE step and the base folder it saves."""

from __future__ import annotations

import copy
import dataclasses
import json
import time

import pytest
import torch

from ip2p.datasets.toy import TOY_WORDS, render_example, toy_seeds
from ip2p.headless import toy_model
from ip2p.headless.editor import EditSettings, edit, encode_image_latent
from ip2p.headless.loading import load_edit_model
from ip2p.headless.random_model import build_random_model

SIZE = 64  # the toy world's image side
MAX_SHIPPED_BYTES = 25_000_000  # the whole model folder's weights, fp32


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def toy():
    """The toy architecture with random weights (8-channel UNet), seed 0."""
    return build_random_model("toy", in_channels=8, seed=0)


@pytest.fixture(scope="module")
def toy_base(tmp_path_factory):
    """A toy base folder whose VAE had two training steps (plumbing, not quality)."""
    out = tmp_path_factory.mktemp("toy_base") / "model"
    return toy_model.build_toy_base(out, vae_steps=2, seed=0, batch_size=2, heldout=2, progress=False)


def _toy_image(seed: int = 0) -> torch.Tensor:
    return toy_model.toy_images([seed])[:1]


# -- architecture ---------------------------------------------------------------------------------


def test_the_toy_unet_has_between_2_5_and_5_million_parameters(toy):
    assert 2_500_000 <= _count(toy.unet) <= 5_000_000


def test_the_toy_unet_is_an_instruct_pix2pix_unet(toy):
    assert toy.unet.config.in_channels == 8
    assert toy.family.is_edit_model


def test_the_toy_unet_attends_only_at_16_px_and_below(toy):
    # 16×16 latents: the first block runs at 16×16, the second at 8×8, the last (no attention) at 4×4.
    assert toy.unet.config.sample_size == 16
    assert toy.unet.config.down_block_types[-1] == "DownBlock2D"


def test_64_px_images_give_16_by_16_latents_with_4_channels(toy):
    with torch.no_grad():
        latent = encode_image_latent(toy, _toy_image())
    assert toy.vae_scale_factor == 4
    assert tuple(latent.shape) == (1, 4, 16, 16)


def test_one_unet_forward_at_batch_3_predicts_the_noise_shape(toy):
    text = torch.randn(3, 77, toy.text_encoder.config.hidden_size)
    sample = torch.randn(3, 8, 16, 16)
    with torch.no_grad():
        out = toy.unet(sample, torch.tensor([1, 500, 999]), encoder_hidden_states=text).sample
    assert tuple(out.shape) == (3, 4, 16, 16)
    assert torch.isfinite(out).all()


def test_the_toy_model_weighs_at_most_25_mb_in_fp32(toy):
    total = sum(_count(m) for m in (toy.unet, toy.vae, toy.text_encoder))
    assert total * 4 <= MAX_SHIPPED_BYTES


# -- vocabulary -----------------------------------------------------------------------------------


def test_the_toy_vocabulary_fills_the_text_encoders_embedding_table(toy):
    assert len(toy.tokenizer) == toy.text_encoder.config.vocab_size
    assert toy.tokenizer.bos_token_id == toy.text_encoder.config.bos_token_id
    assert toy.tokenizer.eos_token_id == toy.text_encoder.config.eos_token_id


@pytest.mark.parametrize("word", sorted(set(TOY_WORDS) | set(toy_model.EXTRA_WORDS)))
def test_every_vocabulary_word_is_one_token(toy, word):
    ids = toy.tokenizer(word).input_ids
    assert len(ids) == 3, (word, ids)
    assert ids[1] < toy.text_encoder.config.vocab_size - 2


def test_toy_instructions_and_captions_give_one_id_per_word_plus_start_and_end(toy):
    for seed in toy_seeds(0, 100):
        example = render_example(seed, SIZE)
        for text in (example.instruction, example.input_caption, example.edited_caption):
            ids = toy.tokenizer(text).input_ids
            assert len(ids) == len(text.split()) + 2, text
            assert (ids[0], ids[-1]) == (toy.tokenizer.bos_token_id, toy.tokenizer.eos_token_id)


def test_every_toy_instruction_fits_the_toy_padding_length_with_room_to_spare(toy):
    """Instructions are padded to 12 tokens, not CLIP's 77 (fewer padding keys for cross-attention to average)."""
    assert toy.tokenizer.model_max_length == toy_model.TOY_MAX_LENGTH == 12
    longest = max(len(toy.tokenizer(render_example(s, SIZE).instruction).input_ids) for s in toy_seeds(0, 400))
    assert longest == len("change the square into a triangle".split()) + 2 < toy.tokenizer.model_max_length


def test_different_toy_words_get_different_ids(toy):
    ids = [toy.tokenizer(word).input_ids[1] for word in TOY_WORDS]
    assert len(set(ids)) == len(TOY_WORDS)


def test_other_text_still_tokenizes_byte_by_byte(toy):
    ids = toy.tokenizer("zebra!").input_ids
    assert len(ids) > 3
    assert toy.tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "zebra!"


def test_the_tokenizer_files_load_with_the_same_ids(toy, tmp_path):
    from ip2p.formats.tokenizer import load_clip_tokenizer

    loaded = load_clip_tokenizer(toy_model.toy_tokenizer_files(tmp_path / "tokenizer"))
    text = "make the circle purple"
    assert loaded(text).input_ids == toy.tokenizer(text).input_ids
    assert loaded.model_max_length == toy.tokenizer.model_max_length


# -- the VAE step -----------------------------------------------------------------------------------


def test_pretrain_vae_lowers_the_reconstruction_loss_and_reports_its_metrics(toy):
    vae = copy.deepcopy(toy.vae)
    toy_model.start_nearly_deterministic_(vae)
    heldout = toy_model.toy_images(toy_seeds(toy_model.VAE_HELDOUT_RUN, 2))
    before = toy_model.measure_vae(vae, heldout)["mae"]
    metrics = toy_model.pretrain_vae(vae, steps=5, batch_size=4, seed=0, heldout=2, progress=False)
    expected = {"initial_loss", "train_loss", "heldout_mae", "latent_std", "scaling_factor", "seconds", "steps"}
    assert expected <= set(metrics)
    assert metrics["train_loss"] < metrics["initial_loss"]
    assert metrics["heldout_mae"] < before
    assert metrics["seconds"] > 0


def test_a_nearly_deterministic_start_makes_posterior_samples_equal_their_mode(toy):
    vae = copy.deepcopy(toy.vae)
    toy_model.start_nearly_deterministic_(vae)
    with torch.no_grad():
        posterior = vae.encode(_toy_image() * 2 - 1).latent_dist
    assert posterior.std.max() < 0.01


def test_pretrain_vae_sets_the_scaling_factor_to_one_over_the_latent_std(toy):
    vae = copy.deepcopy(toy.vae)
    metrics = toy_model.pretrain_vae(vae, steps=1, batch_size=2, seed=0, heldout=2, progress=False)
    assert vae.config.scaling_factor == pytest.approx(1 / metrics["latent_std"])
    assert metrics["scaling_factor"] == pytest.approx(vae.config.scaling_factor)


def test_pretrain_vae_never_trains_on_held_out_seeds():
    train = toy_seeds(toy_model.VAE_TRAIN_RUN, 1)
    heldout = toy_seeds(toy_model.VAE_HELDOUT_RUN, 1)
    assert train.start + 10**6 <= heldout.start  # the whole training run lies below the held-out one


# -- the base folder ---------------------------------------------------------------------------------


def test_build_toy_base_writes_a_folder_that_loads_as_an_edit_model(toy_base):
    model = load_edit_model(toy_base, require_edit=True)
    assert model.unet.config.in_channels == 8
    assert model.vae_scale_factor == 4
    text = "make the star red"
    assert model.tokenizer(text).input_ids == toy_model.toy_tokenizer()(text).input_ids
    assert model.tokenizer.model_max_length == toy_model.TOY_MAX_LENGTH  # the saved folder keeps the padding length


def test_build_toy_base_records_the_vae_metrics_and_the_scaling_factor(toy_base):
    metrics = json.loads((toy_base / toy_model.METRICS_FILE).read_text(encoding="utf-8"))
    config = json.loads((toy_base / "vae" / "config.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == 2
    assert config["scaling_factor"] == pytest.approx(metrics["scaling_factor"])


def test_the_saved_toy_model_weighs_at_most_25_mb(toy_base):
    weights = sum(path.stat().st_size for path in toy_base.rglob("*.safetensors"))
    assert 0 < weights <= MAX_SHIPPED_BYTES


def test_the_saved_toy_model_edits_a_64_px_toy_image_in_seconds(toy_base):
    model = load_edit_model(toy_base, require_edit=True)
    settings = EditSettings("make the circle red", steps=4, sampler="euler", max_side=SIZE, seed=0)
    edit(model, _toy_image(), dataclasses.replace(settings, steps=1), progress=False)  # first-call set-up
    start = time.perf_counter()
    result = edit(model, _toy_image(), settings, progress=False)
    assert time.perf_counter() - start < 10.0  # about 1 s on 2 idle cores; room for a loaded machine
    assert tuple(result.shape) == (1, 3, SIZE, SIZE)
    assert torch.isfinite(result).all()


def test_the_toy_vocabulary_fills_the_toy_text_encoder_exactly():
    from ip2p.formats.toy_vocab import TOY_VOCAB_SIZE
    from ip2p.headless.random_model import architecture_config

    assert architecture_config("toy")["text_encoder"]["vocab_size"] == TOY_VOCAB_SIZE

"""Model formats end to end: save a random model, load it back, in every format we read."""

from __future__ import annotations

import shutil

import pytest
import torch

from ip2p.errors import IP2PError
from ip2p.formats import convert
from ip2p.formats.checkpoint import save_safetensors_atomic
from ip2p.formats.hashing import model_hash
from ip2p.headless.components import canonical_text_state
from ip2p.headless.export import original_state_dict, save_diffusers, save_single_file
from ip2p.headless.loading import load_edit_model
from ip2p.model_family import SD15_BASE, SD15_IP2P

COMPONENTS = ("unet", "vae", "text_encoder")


def assert_same_weights(expected, actual):
    for name in COMPONENTS:
        want = getattr(expected, name).state_dict()
        got = getattr(actual, name).state_dict()
        assert got.keys() == want.keys(), name
        different = [k for k in want if not torch.equal(got[k], want[k])]
        assert not different, f"{name}: {different[:5]}"


def public(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def test_diffusers_folder_loads_back_identical(tiny_model, tiny_diffusers_dir):
    loaded = load_edit_model(tiny_diffusers_dir)
    assert_same_weights(tiny_model, loaded)
    assert loaded.family == SD15_IP2P
    assert loaded.scheduler_config["beta_schedule"] == tiny_model.scheduler_config["beta_schedule"]
    assert loaded.tokenizer.model_max_length == tiny_model.tokenizer.model_max_length == 77  # CLIP's padding kept


def test_single_file_loads_back_identical(tiny_model, tiny_single_file):
    loaded = load_edit_model(tiny_single_file)
    assert_same_weights(tiny_model, loaded)
    assert public(loaded.unet.config) == public(tiny_model.unet.config)
    assert public(loaded.vae.config) == public(tiny_model.vae.config)
    assert loaded.family == SD15_IP2P


def test_single_file_without_our_metadata_loads_from_inferred_configs(tiny_model, tmp_path):
    path = save_safetensors_atomic(original_state_dict(tiny_model), tmp_path / "plain.safetensors")
    loaded = load_edit_model(path)
    assert_same_weights(tiny_model, loaded)
    assert loaded.scheduler_config["timestep_spacing"] == "leading"  # SD 1.5's schedule


def test_tokenizer_survives_both_formats(tiny_model, tiny_diffusers_dir, tiny_single_file):
    prompt = "make the cat red"
    want = tiny_model.tokenizer(prompt).input_ids
    assert load_edit_model(tiny_diffusers_dir).tokenizer(prompt).input_ids == want
    assert load_edit_model(tiny_single_file).tokenizer(prompt).input_ids == want


def test_original_to_diffusers_to_original_is_the_identity(tiny_model):
    original = original_state_dict(tiny_model)
    weights, configs = convert.original_to_diffusers(original)
    back = convert.diffusers_to_original(
        weights["unet"], weights["vae"], weights["text_encoder"], configs["unet"], configs["vae"]
    )
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_conversion_agrees_with_diffusers_own_single_file_converter(tiny_model):
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    original = original_state_dict(tiny_model)
    references = {
        "unet": single_file_utils.convert_ldm_unet_checkpoint(original, dict(tiny_model.unet.config)),
        "vae": single_file_utils.convert_ldm_vae_checkpoint(original, dict(tiny_model.vae.config)),
        "text_encoder": single_file_utils.convert_ldm_clip_checkpoint(original),
    }
    ours = {
        "unet": tiny_model.unet.state_dict(),
        "vae": tiny_model.vae.state_dict(),
        "text_encoder": canonical_text_state(tiny_model.text_encoder),
    }
    for name, reference in references.items():
        assert reference.keys() == ours[name].keys(), name
        assert all(torch.equal(reference[k].reshape(ours[name][k].shape), ours[name][k]) for k in reference), name


def test_inferred_configs_match_the_architecture(tiny_model):
    unet, vae, text = convert.split_original(original_state_dict(tiny_model))
    size_free = {"sample_size"}  # not readable from weights
    inferred = convert.infer_unet_config(unet)
    assert {k: v for k, v in inferred.items() if k not in size_free} == {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in public(tiny_model.unet.config).items()
        if k in inferred and k not in size_free
    }
    inferred_vae = convert.infer_vae_config(vae)
    assert inferred_vae["block_out_channels"] == list(tiny_model.vae.config.block_out_channels)
    assert inferred_vae["layers_per_block"] == tiny_model.vae.config.layers_per_block
    inferred_text = convert.infer_text_config(convert.text_original_to_diffusers(text))
    config = tiny_model.text_encoder.config
    assert [inferred_text[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")] == [
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.vocab_size,
    ]


def test_original_layout_uses_the_keys_comfyui_detects(tiny_model):
    keys = set(original_state_dict(tiny_model))
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.decoder.conv_out.weight" in keys
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    assert original_state_dict(tiny_model)["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 8


def test_lightning_style_ckpt_loads(tiny_model, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": original_state_dict(tiny_model), "global_step": 22000}, path)
    assert_same_weights(tiny_model, load_edit_model(path))


@pytest.mark.parametrize("fmt", ["diffusers", "single_file"])
def test_base_model_is_refused_for_editing(tiny_base_model, tmp_path, fmt):
    path = (
        save_diffusers(tiny_base_model, tmp_path / "base")
        if fmt == "diffusers"
        else save_single_file(tiny_base_model, tmp_path / "base.safetensors")
    )
    with pytest.raises(IP2PError, match="not an InstructPix2Pix model"):
        load_edit_model(path)


def test_base_model_loads_when_editing_is_not_required(tiny_base_model, tmp_path):
    path = save_single_file(tiny_base_model, tmp_path / "base.safetensors")
    loaded = load_edit_model(path, require_edit=False)
    assert loaded.family == SD15_BASE
    assert_same_weights(tiny_base_model, loaded)


def test_diffusers_folder_missing_vae_names_it(tiny_diffusers_dir, tmp_path):
    broken = shutil.copytree(tiny_diffusers_dir, tmp_path / "broken")
    shutil.rmtree(broken / "vae")
    with pytest.raises(IP2PError, match=r"missing vae/"):
        load_edit_model(broken)


def test_diffusers_folder_with_empty_unet_weights_is_reported(tiny_diffusers_dir, tmp_path):
    broken = shutil.copytree(tiny_diffusers_dir, tmp_path / "broken")
    for weights in (broken / "text_encoder").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(IP2PError, match="text_encoder/"):
        load_edit_model(broken)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(IP2PError, match="does not exist"):
        load_edit_model(tmp_path / "nowhere.safetensors")


def test_truncated_single_file_is_an_error(tiny_single_file, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(tiny_single_file.read_bytes()[:-1000])
    with pytest.raises(IP2PError, match="truncated or corrupt"):
        load_edit_model(broken)


def test_loaded_model_hash_is_the_weights_hash(tiny_diffusers_dir, tiny_single_file):
    assert load_edit_model(tiny_single_file).model_hash == model_hash(tiny_single_file)
    assert load_edit_model(tiny_diffusers_dir).model_hash == model_hash(tiny_diffusers_dir)


def test_models_with_different_weights_hash_differently(tiny_model, tiny_base_model, tmp_path, tiny_single_file):
    other = save_single_file(tiny_base_model, tmp_path / "other.safetensors")
    again = save_single_file(tiny_model, tmp_path / "again.safetensors")
    assert model_hash(again) == model_hash(tiny_single_file)
    assert model_hash(other) != model_hash(tiny_single_file)


def test_half_precision_single_file(tiny_model, tmp_path):
    path = save_single_file(tiny_model, tmp_path / "half.safetensors", dtype=torch.float16)
    loaded = load_edit_model(path, dtype=torch.float16)
    assert next(loaded.unet.parameters()).dtype == torch.float16
    want = tiny_model.unet.state_dict()
    assert all(torch.equal(v, want[k].half()) for k, v in loaded.unet.state_dict().items())


def test_saving_over_an_existing_folder_replaces_it_and_leaves_no_temporaries(tiny_model, tiny_base_model, tmp_path):
    target = tmp_path / "model"
    save_diffusers(tiny_base_model, target)
    save_diffusers(tiny_model, target)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert load_edit_model(target).family == SD15_IP2P


def test_diffusers_pipeline_reads_our_folder(tiny_diffusers_dir):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_diffusers_dir, local_files_only=True)
    assert pipe.unet.config.in_channels == 8


@pytest.mark.slow
def test_full_size_sd15_converts_like_diffusers_and_infers_its_own_configs(tmp_path):
    """The one full-size check: SD 1.5 shapes, diffusers' converter as the oracle, configs read back."""
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    from ip2p.headless.random_model import architecture_config, build_random_model

    model = build_random_model("sd15", in_channels=8)
    original = original_state_dict(model)
    assert original["model.diffusion_model.input_blocks.0.0.weight"].shape == (320, 8, 3, 3)
    reference = single_file_utils.convert_ldm_unet_checkpoint(original, dict(model.unet.config))
    ours = model.unet.state_dict()
    assert reference.keys() == ours.keys()
    assert all(torch.equal(reference[k], ours[k]) for k in ours)
    reference_vae = single_file_utils.convert_ldm_vae_checkpoint(original, dict(model.vae.config))
    ours_vae = model.vae.state_dict()
    assert reference_vae.keys() == ours_vae.keys()
    unet, vae, text = convert.split_original(original)
    expected = architecture_config("sd15")
    assert convert.infer_unet_config(unet) == expected["unet"]
    inferred_vae = convert.infer_vae_config(vae)
    assert inferred_vae == expected["vae"]
    inferred_text = convert.infer_text_config(convert.text_original_to_diffusers(text))
    assert {k: inferred_text[k] for k in expected["text_encoder"]} == expected["text_encoder"]

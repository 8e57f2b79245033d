"""Key conversion original <-> diffusers on hand-checked keys (torch only; full models in tests/headless)."""

from __future__ import annotations

import pytest
import torch

from ip2p.errors import IP2PError
from ip2p.formats.convert import (
    infer_text_config,
    split_original,
    text_original_to_diffusers,
    unet_diffusers_to_original,
    unet_original_to_diffusers,
    vae_diffusers_to_original,
    vae_original_to_diffusers,
)

# Two levels, one resnet per level, attention on the first level only (the tiny test layout).
TINY_UNET = {
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}
# SD 1.5's layout: four levels, two resnets per level, attention on the first three.
SD15_UNET = {
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
TINY_VAE = {"block_out_channels": [32, 64], "layers_per_block": 1}

# original key -> diffusers key, worked out by hand from the two layouts.
UNET_CASES = [
    (TINY_UNET, "input_blocks.0.0.weight", "conv_in.weight"),
    (TINY_UNET, "time_embed.2.bias", "time_embedding.linear_2.bias"),
    (TINY_UNET, "input_blocks.1.0.in_layers.2.weight", "down_blocks.0.resnets.0.conv1.weight"),
    (TINY_UNET, "input_blocks.1.1.proj_in.weight", "down_blocks.0.attentions.0.proj_in.weight"),
    (TINY_UNET, "input_blocks.2.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"),
    (TINY_UNET, "input_blocks.3.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight"),
    (TINY_UNET, "middle_block.2.emb_layers.1.weight", "mid_block.resnets.1.time_emb_proj.weight"),
    (TINY_UNET, "output_blocks.1.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
    (
        TINY_UNET,
        "output_blocks.3.1.transformer_blocks.0.attn2.to_k.weight",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight",
    ),
    (TINY_UNET, "out.0.weight", "conv_norm_out.weight"),
    (SD15_UNET, "input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"),
    (SD15_UNET, "input_blocks.11.0.out_layers.3.weight", "down_blocks.3.resnets.1.conv2.weight"),
    (SD15_UNET, "output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
    (SD15_UNET, "output_blocks.5.2.conv.weight", "up_blocks.1.upsamplers.0.conv.weight"),
    (SD15_UNET, "output_blocks.11.1.norm.weight", "up_blocks.3.attentions.2.norm.weight"),
    (SD15_UNET, "middle_block.1.proj_out.bias", "mid_block.attentions.0.proj_out.bias"),
]


@pytest.mark.parametrize(("config", "original", "diffusers"), UNET_CASES)
def test_unet_keys_map_both_ways(config, original, diffusers):
    value = torch.randn(3)
    assert unet_original_to_diffusers({original: value}, config) == {diffusers: value}
    assert unet_diffusers_to_original({diffusers: value}, config) == {original: value}


def test_unet_key_outside_the_architecture_is_refused():
    with pytest.raises(IP2PError, match="input_blocks.9"):
        unet_original_to_diffusers({"input_blocks.9.0.in_layers.0.weight": torch.ones(1)}, TINY_UNET)


VAE_CASES = [
    ("encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
    ("encoder.down.0.downsample.conv.weight", "encoder.down_blocks.0.downsamplers.0.conv.weight"),
    ("encoder.norm_out.bias", "encoder.conv_norm_out.bias"),
    ("decoder.up.1.block.1.conv1.weight", "decoder.up_blocks.0.resnets.1.conv1.weight"),  # decoder levels reversed
    ("decoder.up.1.upsample.conv.bias", "decoder.up_blocks.0.upsamplers.0.conv.bias"),
    ("decoder.up.0.block.0.norm2.weight", "decoder.up_blocks.1.resnets.0.norm2.weight"),
    ("decoder.mid.attn_1.norm.weight", "decoder.mid_block.attentions.0.group_norm.weight"),
    ("post_quant_conv.weight", "post_quant_conv.weight"),
]


@pytest.mark.parametrize(("original", "diffusers"), VAE_CASES)
def test_vae_keys_map_both_ways(original, diffusers):
    value = torch.randn(3)
    assert vae_original_to_diffusers({original: value}, TINY_VAE) == {diffusers: value}
    assert vae_diffusers_to_original({diffusers: value}, TINY_VAE) == {original: value}


@pytest.mark.parametrize(
    ("original", "diffusers"), [("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")]
)
def test_vae_attention_is_a_1x1_conv_in_the_original_and_linear_in_diffusers(original, diffusers):
    conv = torch.randn(64, 64, 1, 1)
    linear = vae_original_to_diffusers({f"encoder.mid.attn_1.{original}.weight": conv}, TINY_VAE)
    assert linear[f"encoder.mid_block.attentions.0.{diffusers}.weight"].shape == (64, 64)
    back = vae_diffusers_to_original(linear, TINY_VAE)
    assert torch.equal(back[f"encoder.mid.attn_1.{original}.weight"], conv)


def test_vae_attention_bias_keeps_its_shape():
    bias = torch.randn(64)
    out = vae_original_to_diffusers({"decoder.mid.attn_1.q.bias": bias}, TINY_VAE)
    assert torch.equal(out["decoder.mid_block.attentions.0.to_q.bias"], bias)


def test_old_text_layout_without_text_model_is_accepted():
    value = torch.randn(3)
    old = {"embeddings.token_embedding.weight": value, "text_model.final_layer_norm.weight": value}
    assert set(text_original_to_diffusers(old)) == {
        "text_model.embeddings.token_embedding.weight",
        "text_model.final_layer_norm.weight",
    }


def text_weights(hidden: int, vocab: int = 1000, layers: int = 2) -> dict[str, torch.Tensor]:
    weights = {
        "text_model.embeddings.token_embedding.weight": torch.zeros(vocab, hidden),
        "text_model.embeddings.position_embedding.weight": torch.zeros(77, hidden),
    }
    for i in range(layers):
        weights[f"text_model.encoder.layers.{i}.mlp.fc1.weight"] = torch.zeros(4 * hidden, hidden)
    return weights


def test_text_config_is_read_from_shapes_with_clip_defaults():
    config = infer_text_config(text_weights(768, vocab=49408, layers=12))
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (768, 12, 3072)
    assert (config["vocab_size"], config["max_position_embeddings"]) == (49408, 77)
    assert (config["num_attention_heads"], config["hidden_act"]) == (12, "quick_gelu")
    assert (config["bos_token_id"], config["eos_token_id"]) == (49406, 49407)


def test_small_text_encoders_get_at_least_one_head():
    assert infer_text_config(text_weights(32))["num_attention_heads"] == 1


def test_split_ignores_training_leftovers():
    ones = torch.ones(1)
    state = {
        "model.diffusion_model.out.2.weight": ones,
        "first_stage_model.quant_conv.weight": ones,
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": ones,
        "model_ema.decay": ones,
        "alphas_cumprod": ones,
    }
    unet, vae, text = split_original(state)
    assert (list(unet), list(vae), list(text)) == (
        ["out.2.weight"],
        ["quant_conv.weight"],
        ["text_model.final_layer_norm.weight"],
    )


def test_split_names_the_missing_part():
    with pytest.raises(IP2PError, match=r"VAE \(first_stage_model"):
        split_original(
            {"model.diffusion_model.out.2.weight": torch.ones(1), "cond_stage_model.transformer.x": torch.ones(1)}
        )

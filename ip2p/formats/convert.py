"""Key conversion between the original single-file layout and diffusers' module layout.

Original (CompVis/ldm) single files hold ``model.diffusion_model.*`` (UNet),
``first_stage_model.*`` (VAE) and ``cond_stage_model.transformer.*`` (CLIP text encoder); diffusers
keeps each part in its own module with other names. The UNet's index mapping is derived from
its config (number of blocks, layers per block, which blocks have attention), so tiny test models
and the full SD 1.5 architecture convert with the same code. torch and safetensors only: the
ComfyUI nodes use it to read diffusers folders, which current ComfyUI cannot load for an 8-channel
SD 1.5 UNet.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import IP2PError
from .checkpoint import detect_format, load_single_file, read_json_object

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
TEXT_MODEL_PREFIX = TEXT_PREFIX + "text_model."

StateDict = dict[str, torch.Tensor]

# SD 1.5 values for what the weights cannot tell.
DEFAULT_ATTENTION_HEAD_DIM = 8  # diffusers' name for SD 1.5's 8 attention heads
DEFAULT_NORM_GROUPS = 32
DEFAULT_UNET_SAMPLE_SIZE = 64
DEFAULT_VAE_SAMPLE_SIZE = 512
DEFAULT_VAE_SCALING = 0.18215
DEFAULT_TEXT_ACT = "quick_gelu"

# diffusers resnet sub-module -> original ResBlock sub-module.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


# --------------------------------------------------------------------------------------------
# Generic prefix mapping


def _rename_inner(rest: str, renames: Mapping[str, str]) -> str:
    for src, dst in sorted(renames.items(), key=lambda item: -len(item[0])):
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src) :]
    raise KeyError(rest)


def _apply_pairs(
    state: Mapping[str, torch.Tensor],
    pairs: list[tuple[str, str, Mapping[str, str] | None]],
    what: str,
) -> StateDict:
    """Rename keys by the longest matching module prefix; ``pairs`` are (from, to, inner renames)."""
    ordered = sorted(pairs, key=lambda pair: -len(pair[0]))
    out: StateDict = {}
    for key, value in state.items():
        for src, dst, inner in ordered:
            if key.startswith(src):
                rest = key[len(src) :]
                try:
                    out[dst + (_rename_inner(rest, inner) if inner else rest)] = value
                except KeyError:
                    continue
                break
        else:
            raise IP2PError(
                f"Unexpected {what} weight {key!r}: it does not fit the architecture inferred from the other "
                f"weights. The checkpoint may be damaged or of an unsupported architecture."
            )
    return out


def _invert(pairs: list[tuple[str, str, Mapping[str, str] | None]]) -> list[tuple[str, str, Mapping[str, str] | None]]:
    return [(dst, src, {v: k for k, v in inner.items()} if inner else None) for src, dst, inner in pairs]


def _indices(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in state if (m := regex.match(key))})


# --------------------------------------------------------------------------------------------
# UNet


def _unet_layout(config: Mapping) -> tuple[int, int, list[bool], list[bool]]:
    down = list(config["down_block_types"])
    up = list(config["up_block_types"])
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise IP2PError(f"Per-block layers_per_block {lpb!r} is not supported by the converter.")
    return len(down), lpb, ["CrossAttn" in t for t in down], ["CrossAttn" in t for t in up]


def _unet_pairs(config: Mapping) -> list[tuple[str, str, Mapping[str, str] | None]]:
    """(diffusers prefix, original prefix, inner renames) for every UNet module."""
    n_blocks, lpb, down_attn, up_attn = _unet_layout(config)
    pairs: list[tuple[str, str, Mapping[str, str] | None]] = [
        ("time_embedding.linear_1.", "time_embed.0.", None),
        ("time_embedding.linear_2.", "time_embed.2.", None),
        ("conv_in.", "input_blocks.0.0.", None),
        ("conv_norm_out.", "out.0.", None),
        ("conv_out.", "out.2.", None),
        ("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET),
        ("mid_block.attentions.0.", "middle_block.1.", None),
        ("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET),
    ]
    for b in range(n_blocks):
        for layer in range(lpb):
            i = 1 + b * (lpb + 1) + layer
            pairs.append((f"down_blocks.{b}.resnets.{layer}.", f"input_blocks.{i}.0.", _UNET_RESNET))
            if down_attn[b]:
                pairs.append((f"down_blocks.{b}.attentions.{layer}.", f"input_blocks.{i}.1.", None))
        if b < n_blocks - 1:
            i = 1 + b * (lpb + 1) + lpb
            pairs.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{i}.0.op.", None))
    for u in range(n_blocks):
        for layer in range(lpb + 1):
            j = u * (lpb + 1) + layer
            pairs.append((f"up_blocks.{u}.resnets.{layer}.", f"output_blocks.{j}.0.", _UNET_RESNET))
            if up_attn[u]:
                pairs.append((f"up_blocks.{u}.attentions.{layer}.", f"output_blocks.{j}.1.", None))
        if u < n_blocks - 1:
            j = u * (lpb + 1) + lpb
            pairs.append(
                (f"up_blocks.{u}.upsamplers.0.conv.", f"output_blocks.{j}.{2 if up_attn[u] else 1}.conv.", None)
            )
    return pairs


def unet_diffusers_to_original(state: Mapping[str, torch.Tensor], config: Mapping) -> StateDict:
    """diffusers UNet2DConditionModel keys -> original keys (without the ``model.diffusion_model.`` prefix)."""
    return _apply_pairs(state, _unet_pairs(config), "UNet")


def unet_original_to_diffusers(state: Mapping[str, torch.Tensor], config: Mapping) -> StateDict:
    """Original UNet keys (prefix stripped) -> diffusers UNet2DConditionModel keys."""
    return _apply_pairs(state, _invert(_unet_pairs(config)), "UNet")


def infer_unet_config(state: Mapping[str, torch.Tensor]) -> dict:
    """A UNet2DConditionModel config from original UNet weights (prefix stripped).

    Shapes give the channels, block count, layers per block, attention placement and context
    size; SD 1.5 defaults fill in the rest (8 heads, 32 norm groups).
    """
    if "input_blocks.0.0.weight" not in state:
        raise IP2PError("The checkpoint has no UNet input convolution (model.diffusion_model.input_blocks.0.0.weight).")
    if "label_emb.0.0.weight" in state:
        raise IP2PError(
            "This is an SDXL checkpoint; headless loading of SDXL single files is not supported yet. "
            "Use it in ComfyUI, or use an SD 1.5 InstructPix2Pix model headless."
        )
    n_inputs = len(_indices(state, r"input_blocks\.(\d+)\."))
    ops = _indices(state, r"input_blocks\.(\d+)\.0\.op\.weight")
    lpb = ops[0] - 1 if ops else n_inputs - 1
    n_blocks = n_inputs // (lpb + 1)
    if n_blocks * (lpb + 1) != n_inputs or lpb < 1:
        raise IP2PError(f"Cannot make out the UNet's block structure ({n_inputs} input blocks).")
    channels, down_attn, depths = [], [], []
    for b in range(n_blocks):
        first = 1 + b * (lpb + 1)
        channels.append(int(state[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]))
        has_attention = f"input_blocks.{first}.1.proj_in.weight" in state
        down_attn.append(has_attention)
        if has_attention:
            depths.append(len(_indices(state, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")))
    context_keys = [k for k in state if k.endswith("attn2.to_k.weight")]
    proj_in = next((state[k] for k in state if k.endswith(".proj_in.weight")), None)
    config = {
        "act_fn": "silu",
        "attention_head_dim": DEFAULT_ATTENTION_HEAD_DIM,
        "block_out_channels": channels,
        "center_input_sample": False,
        "cross_attention_dim": int(state[context_keys[0]].shape[1]) if context_keys else 768,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": int(state["input_blocks.0.0.weight"].shape[1]),
        "layers_per_block": lpb,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": DEFAULT_NORM_GROUPS,
        "out_channels": int(state["out.2.weight"].shape[0]),
        "sample_size": DEFAULT_UNET_SAMPLE_SIZE,
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(down_attn)],
    }
    if proj_in is not None and proj_in.ndim == 2:
        config["use_linear_projection"] = True
    if depths and max(depths) > 1:
        config["transformer_layers_per_block"] = _pad(depths, down_attn)
    if "middle_block.1.proj_in.weight" not in state:
        config["mid_block_type"] = "UNetMidBlock2D"
    return config


def _pad(depths: list[int], attn: list[bool]) -> list[int]:
    """Transformer depth per block: the measured depth where a block has attention, else 1."""
    it = iter(depths)
    return [next(it) if a else 1 for a in attn]


# --------------------------------------------------------------------------------------------
# VAE


def _vae_pairs(config: Mapping) -> list[tuple[str, str, Mapping[str, str] | None]]:
    """(diffusers prefix, original prefix, inner renames) for every VAE module."""
    n_blocks = len(config["block_out_channels"])
    lpb = config["layers_per_block"]
    pairs: list[tuple[str, str, Mapping[str, str] | None]] = [
        ("quant_conv.", "quant_conv.", None),
        ("post_quant_conv.", "post_quant_conv.", None),
    ]
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.conv_in.", f"{part}.conv_in.", None),
            (f"{part}.conv_out.", f"{part}.conv_out.", None),
            (f"{part}.conv_norm_out.", f"{part}.norm_out.", None),
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", _VAE_RESNET),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", _VAE_RESNET),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION),
        ]
    for b in range(n_blocks):
        for layer in range(lpb):
            pairs.append((f"encoder.down_blocks.{b}.resnets.{layer}.", f"encoder.down.{b}.block.{layer}.", _VAE_RESNET))
        if b < n_blocks - 1:
            pairs.append((f"encoder.down_blocks.{b}.downsamplers.0.conv.", f"encoder.down.{b}.downsample.conv.", None))
    for u in range(n_blocks):
        k = n_blocks - 1 - u  # the original decoder lists its levels from the lowest resolution up
        for layer in range(lpb + 1):
            pairs.append((f"decoder.up_blocks.{u}.resnets.{layer}.", f"decoder.up.{k}.block.{layer}.", _VAE_RESNET))
        if u < n_blocks - 1:
            pairs.append((f"decoder.up_blocks.{u}.upsamplers.0.conv.", f"decoder.up.{k}.upsample.conv.", None))
    return pairs


_VAE_ATTN_DIFFUSERS = re.compile(r".*mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")
_VAE_ATTN_ORIGINAL = re.compile(r".*mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def vae_diffusers_to_original(state: Mapping[str, torch.Tensor], config: Mapping) -> StateDict:
    """diffusers AutoencoderKL keys -> original keys (without ``first_stage_model.``).

    The mid-block attention projections are Linear [C, C] in diffusers and 1x1 convolutions
    [C, C, 1, 1] in the original.
    """
    out = _apply_pairs(state, _vae_pairs(config), "VAE")
    return {k: (v[:, :, None, None] if _VAE_ATTN_ORIGINAL.match(k) and v.ndim == 2 else v) for k, v in out.items()}


def vae_original_to_diffusers(state: Mapping[str, torch.Tensor], config: Mapping) -> StateDict:
    """Original VAE keys (prefix stripped) -> diffusers AutoencoderKL keys."""
    out = _apply_pairs(state, _invert(_vae_pairs(config)), "VAE")
    return {k: (v[:, :, 0, 0] if _VAE_ATTN_DIFFUSERS.match(k) and v.ndim == 4 else v) for k, v in out.items()}


def infer_vae_config(state: Mapping[str, torch.Tensor]) -> dict:
    """An AutoencoderKL config from original VAE weights (prefix stripped); SD 1.5 defaults for the rest."""
    if "encoder.conv_in.weight" not in state:
        raise IP2PError("The checkpoint has no VAE (first_stage_model.encoder.conv_in.weight is missing).")
    levels = _indices(state, r"encoder\.down\.(\d+)\.")
    channels = [int(state[f"encoder.down.{b}.block.0.conv1.weight"].shape[0]) for b in levels]
    return {
        "act_fn": "silu",
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "latent_channels": int(state["post_quant_conv.weight"].shape[0]),
        "layers_per_block": len(_indices(state, r"encoder\.down\.0\.block\.(\d+)\.")),
        "norm_num_groups": DEFAULT_NORM_GROUPS,
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "sample_size": DEFAULT_VAE_SAMPLE_SIZE,
        "scaling_factor": DEFAULT_VAE_SCALING,
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
    }


# --------------------------------------------------------------------------------------------
# CLIP text encoder


def text_original_to_diffusers(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Original text-encoder keys (``cond_stage_model.transformer.`` stripped) -> transformers CLIPTextModel keys.

    Accepts both ``text_model.*`` and the older layout without it (``embeddings.*``, ``encoder.*``).
    """
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def text_diffusers_to_original(state: Mapping[str, torch.Tensor]) -> StateDict:
    """CLIPTextModel keys -> original keys (``text_model.*``, to go under ``cond_stage_model.transformer.``)."""
    return dict(state)


def infer_text_config(state: Mapping[str, torch.Tensor]) -> dict:
    """A CLIPTextConfig dict from CLIPTextModel weights (``text_model.*`` keys).

    Heads cannot be read from the weights: ``max(1, hidden // 64)`` (12 for CLIP ViT-L/14).
    """
    key = "text_model.embeddings.token_embedding.weight"
    if key not in state:
        raise IP2PError("The checkpoint has no CLIP text encoder (cond_stage_model.transformer.*).")
    vocab, hidden = (int(n) for n in state[key].shape)
    return {
        "attention_dropout": 0.0,
        "bos_token_id": vocab - 2,
        "dropout": 0.0,
        "eos_token_id": vocab - 1,
        "hidden_act": DEFAULT_TEXT_ACT,
        "hidden_size": hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": int(state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": int(state["text_model.embeddings.position_embedding.weight"].shape[0]),
        "num_attention_heads": max(1, hidden // 64),
        "num_hidden_layers": len(_indices(state, r"text_model\.encoder\.layers\.(\d+)\.")),
        "pad_token_id": vocab - 1,
        "projection_dim": hidden,
        "vocab_size": vocab,
    }


# --------------------------------------------------------------------------------------------
# Whole checkpoints


def split_original(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict, StateDict]:
    """(UNet, VAE, text encoder) weights of an original single file, prefixes stripped.

    Other keys (EMA copies, noise-schedule buffers, training leftovers) are ignored.
    """
    parts: tuple[StateDict, StateDict, StateDict] = ({}, {}, {})
    for key, value in state.items():
        for index, prefix in enumerate((UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)):
            if key.startswith(prefix):
                parts[index][key[len(prefix) :]] = value
                break
    missing = [
        name
        for name, part in zip(
            (
                "UNet (model.diffusion_model.*)",
                "VAE (first_stage_model.*)",
                "text encoder (cond_stage_model.transformer.*)",
            ),
            parts,
            strict=True,
        )
        if not part
    ]
    if missing:
        raise IP2PError(
            f"The checkpoint lacks the {', '.join(missing)}. Expected a full Stable Diffusion checkpoint in the "
            f"original layout (UNet, VAE and CLIP text encoder in one file); for diffusers weights pass the model folder."
        )
    return parts


def original_to_diffusers(
    state: Mapping[str, torch.Tensor], configs: Mapping[str, Mapping] | None = None
) -> tuple[dict[str, StateDict], dict[str, dict]]:
    """An original single file's weights as diffusers state dicts, with configs.

    Returns ``({"unet", "vae", "text_encoder"} -> state dict, same keys -> config)``; ``configs``
    given (e.g. from the file's metadata) take precedence over inferred ones.
    """
    unet, vae, text = split_original(state)
    text = text_original_to_diffusers(text)
    inferred = {"unet": infer_unet_config(unet), "vae": infer_vae_config(vae), "text_encoder": infer_text_config(text)}
    chosen = {name: dict((configs or {}).get(name) or inferred[name]) for name in inferred}
    return (
        {
            "unet": unet_original_to_diffusers(unet, chosen["unet"]),
            "vae": vae_original_to_diffusers(vae, chosen["vae"]),
            "text_encoder": text,
        },
        chosen,
    )


def diffusers_to_original(
    unet: Mapping[str, torch.Tensor],
    vae: Mapping[str, torch.Tensor],
    text_encoder: Mapping[str, torch.Tensor],
    unet_config: Mapping,
    vae_config: Mapping,
) -> StateDict:
    """diffusers state dicts -> one original-layout state dict (what ComfyUI's checkpoint loader reads)."""
    out: StateDict = {}
    out.update({UNET_PREFIX + k: v for k, v in unet_diffusers_to_original(unet, unet_config).items()})
    out.update({VAE_PREFIX + k: v for k, v in vae_diffusers_to_original(vae, vae_config).items()})
    out.update({TEXT_PREFIX + k: v for k, v in text_diffusers_to_original(text_encoder).items()})
    return out


# --------------------------------------------------------------------------------------------
# diffusers folders without diffusers (for the ComfyUI nodes)


def _component_weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    """All weights of one component folder (sharded or not, safetensors preferred, fp32 before variants)."""
    directory = folder / component
    files = sorted(p for p in directory.glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise IP2PError(
            f"{folder} has no weights in {component}/ (expected *.safetensors or *.bin). "
            f"Re-save or re-download the model folder."
        )
    preferred = [p for p in files if p.suffix == ".safetensors"] or files
    plain = [p for p in preferred if len(p.name.split(".")) == 2] or preferred  # no ".fp16." variant
    state: dict[str, torch.Tensor] = {}
    for path in plain:
        state.update(load_single_file(path))
    return state


def _component_config(folder: Path, component: str) -> dict:
    return read_json_object(folder / component / "config.json", "Re-save the model folder.")


def _config_layout_error(config_file: Path, exc: Exception) -> IP2PError:
    return IP2PError(
        f"{config_file} does not describe a Stable Diffusion {config_file.parent.name} ({type(exc).__name__}: {exc}). "
        f"Copy the file again from the model's source, or re-save the model folder."
    )


def load_diffusers_as_original(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A diffusers model folder as one original-layout state dict (what ComfyUI's loader reads).

    Needs only torch and safetensors: current ComfyUI cannot load an 8-channel SD 1.5 diffusers
    UNet itself, and the nodes must not depend on diffusers.
    """
    folder = Path(folder)
    if detect_format(folder) != "diffusers":
        raise IP2PError(f"{folder} is not a diffusers model folder (no model_index.json).")
    unet_config = _component_config(folder, "unet")
    vae_config = _component_config(folder, "vae")
    unet = _checked(unet_diffusers_to_original, _component_weights(folder, "unet"), unet_config, folder / "unet")
    vae = _checked(vae_diffusers_to_original, _component_weights(folder, "vae"), vae_config, folder / "vae")
    text = text_original_to_diffusers(_component_weights(folder, "text_encoder"))
    out: StateDict = {}
    out.update({UNET_PREFIX + k: v for k, v in unet.items()})
    out.update({VAE_PREFIX + k: v for k, v in vae.items()})
    out.update({TEXT_PREFIX + k: v for k, v in text_diffusers_to_original(text).items()})
    return out


def _checked(function, state: StateDict, config: Mapping, component: Path) -> StateDict:
    """``function(state, config)``, with a config whose values do not fit (wrong types, missing keys) named."""
    try:
        return function(state, config)
    except IP2PError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise _config_layout_error(component / "config.json", exc) from exc

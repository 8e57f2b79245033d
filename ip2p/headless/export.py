"""Save a headless model: a diffusers folder, or one original-layout single file.

The trainer's exports and the demo's model go through here. A diffusers folder is written by
diffusers' own pipeline ``save_pretrained`` (so every diffusers and transformers version reads it);
the single file is what ComfyUI's own checkpoint loader reads, and carries the exact configs in its
metadata so it loads back to the same modules. Both are written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import IP2PError
from ..formats import convert
from ..formats.atomic import atomic_dir
from ..formats.checkpoint import META_KEY, SAFETENSORS_SUFFIXES, save_safetensors_atomic
from ..formats.tokenizer import CLIP_VOCAB_SIZE, MIN_SYNTHETIC_VOCAB_SIZE, synthetic_clip_vocab, write_tokenizer_files
from ..formats.toy_vocab import TOY_TOKENIZER, toy_vocab, toy_vocab_min_size
from . import libraries
from .components import EditModel, canonical_text_state

_TEXT_CONFIG_KEYS = (
    "attention_dropout",
    "bos_token_id",
    "dropout",
    "eos_token_id",
    "hidden_act",
    "hidden_size",
    "initializer_factor",
    "initializer_range",
    "intermediate_size",
    "layer_norm_eps",
    "max_position_embeddings",
    "num_attention_heads",
    "num_hidden_layers",
    "pad_token_id",
    "projection_dim",
    "vocab_size",
)


def _public_config(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _text_config(text_encoder) -> dict:
    config = text_encoder.config
    return {k: getattr(config, k) for k in _TEXT_CONFIG_KEYS if hasattr(config, k)}


def model_configs(model: EditModel) -> dict:
    """The configs that rebuild ``model``'s modules: {"unet", "vae", "text_encoder", "scheduler"}."""
    return {
        "unet": _public_config(model.unet.config),
        "vae": _public_config(model.vae.config),
        "text_encoder": _text_config(model.text_encoder),
        "scheduler": dict(model.scheduler_config),
    }


def _tokenizer_vocab(tokenizer) -> tuple[list[str], list[tuple[str, str]]]:
    """Vocabulary (in id order) and merges of a fast CLIP tokenizer, for vocab.json / merges.txt."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data["model"]
    vocab = [token for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return vocab, merges  # type: ignore[return-value]


def save_tokenizer(tokenizer, folder: str | os.PathLike) -> Path:
    """Write a CLIP tokenizer as vocab.json + merges.txt (what diffusers and ComfyUI both read),
    keeping its padding length (the toy model's is 12, not CLIP's 77)."""
    vocab, merges = _tokenizer_vocab(tokenizer)
    return write_tokenizer_files(folder, vocab, merges, max_length=tokenizer.model_max_length)


def _scheduler(model: EditModel, diffusers):
    """The model's noise schedule as a diffusers scheduler object (PNDM, SD 1.5's own, by default)."""
    config = dict(model.scheduler_config)
    cls = getattr(diffusers, str(config.get("_class_name", "PNDMScheduler")), None) or diffusers.PNDMScheduler
    return cls.from_config(config)


def save_diffusers(model: EditModel, folder: str | os.PathLike) -> Path:
    """Save ``model`` as a diffusers folder with diffusers' pipeline ``save_pretrained``, atomically.

    The text encoder's weights are then rewritten under the classic ``text_model.*`` keys, which
    every transformers version (and other tools reading diffusers folders) understands.
    """
    diffusers, _ = libraries()
    folder = Path(folder)
    pipeline_class = (
        diffusers.StableDiffusionInstructPix2PixPipeline
        if model.family.is_edit_model
        else diffusers.StableDiffusionPipeline
    )
    pipeline = pipeline_class(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=_scheduler(model, diffusers),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_dir(folder) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        save_safetensors_atomic(canonical_text_state(model.text_encoder), tmp / "text_encoder" / "model.safetensors")
        save_tokenizer(model.tokenizer, tmp / "tokenizer")  # vocab.json + merges.txt, which ComfyUI reads too
    return folder


def original_state_dict(model: EditModel, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``model``'s weights in the original single-file layout (optionally cast to ``dtype``)."""
    state = convert.diffusers_to_original(
        model.unet.state_dict(),
        model.vae.state_dict(),
        canonical_text_state(model.text_encoder),
        model.unet.config,
        model.vae.config,
    )
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    return state


def tokenizer_record(model: EditModel) -> str:
    """What a single file records of ``model``'s tokenizer, which the file itself cannot carry.

    ``"toy"``: the toy world's vocabulary (:mod:`ip2p.formats.toy_vocab`); ``"synthetic:N"``: the
    synthetic vocabulary of random models; ``""``: CLIP's own, which the loader finds offline. Told
    apart by the tokenizer's vocabulary itself (a model loaded from a diffusers folder has no other
    trace of it), built at the text encoder's size as the loader rebuilds it. Any other tokenizer
    cannot be rebuilt from a single file: refused, naming the diffusers folder as the way to save it.
    """
    vocab_size = int(model.text_encoder.config.vocab_size)
    vocab = model.tokenizer.get_vocab()
    if len(vocab) == vocab_size:
        if vocab_size >= toy_vocab_min_size() and vocab == _ids(toy_vocab(vocab_size)[0]):
            return TOY_TOKENIZER
        if vocab_size >= MIN_SYNTHETIC_VOCAB_SIZE and vocab == _ids(synthetic_clip_vocab(vocab_size)[0]):
            return f"synthetic:{vocab_size}"
    if vocab_size == CLIP_VOCAB_SIZE and len(vocab) == CLIP_VOCAB_SIZE:
        return ""
    raise IP2PError(
        f"The model's tokenizer ({len(vocab)} tokens, text encoder vocabulary {vocab_size}) is neither CLIP's, "
        f"the toy vocabulary nor a synthetic one, and a single file carries no tokenizer: it would load back with "
        f"the wrong one. Save the model as a diffusers folder instead (save_diffusers), which keeps its tokenizer."
    )


def _ids(vocab: list[str]) -> dict[str, int]:
    return {token: index for index, token in enumerate(vocab)}


def save_single_file(model: EditModel, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Save ``model`` as one original-layout ``.safetensors`` file (ComfyUI's checkpoint loader reads it).

    The metadata records the exact configs and which tokenizer to rebuild (:func:`tokenizer_record`:
    the toy or a synthetic vocabulary; none for CLIP's), so the file loads back to the same modules
    and the same tokens. Architectures ComfyUI cannot build (the toy model's 8-group norms and small
    text encoder) round-trip through the headless loader only.
    """
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise IP2PError(f"A single-file model is saved as .safetensors, got {path}. Choose a .safetensors path.")
    ours: dict = {"configs": model_configs(model)}
    tokenizer = tokenizer_record(model)
    if tokenizer:
        ours["tokenizer"] = tokenizer
    metadata = {META_KEY: json.dumps(ours, sort_keys=True)}
    return save_safetensors_atomic(original_state_dict(model, dtype), path, metadata=metadata)

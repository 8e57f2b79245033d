"""Load and save models for the headless (diffusers) backend, fully offline.

Two formats: a diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``) and an original single file (``.safetensors``; ``.ckpt`` read
safely, see :mod:`ip2p.checkpoint`). Single files are converted in memory and their modules
built from configs inferred from the weights, so nothing is ever fetched from a hub. Our own
single files also carry their exact configs in the safetensors metadata.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from . import convert
from .atomic import atomic_dir
from .checkpoint import (
    EDM_VPRED_KEY,
    SAFETENSORS_SUFFIXES,
    detect_format,
    load_single_file,
    missing_diffusers_components,
    model_hash,
    read_unet_facts,
    save_safetensors_atomic,
)
from .clip_tokenizer import (
    CLIP_VOCAB_SIZE,
    find_tokenizer_dir,
    load_clip_tokenizer,
    write_synthetic_clip_tokenizer,
    write_tokenizer_files,
)
from .components import EditModel
from .errors import IP2PError
from .model_family import classify, require_edit_model
from .random_model import sd15_scheduler_config

logger = logging.getLogger(__name__)

# Our single files carry one safetensors metadata key (one key keeps the file bytes reproducible):
# JSON {"configs": {"unet", "vae", "text_encoder", "scheduler"}, "tokenizer": "synthetic:<vocab>" or absent}.
META_KEY = "ip2p"
TEXT_MODEL = "text_model."
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


def _headless():
    try:
        import diffusers
        import transformers
    except ImportError as exc:
        raise IP2PError(
            f"The headless backend needs diffusers and transformers ({exc}). "
            f"Install them: pip install 'comfyui-ip2p[headless]'"
        ) from exc
    return diffusers, transformers


# --------------------------------------------------------------------------------------------
# Loading


def load_edit_model(
    path: str | os.PathLike,
    *,
    require_edit: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> EditModel:
    """Load a model from a diffusers folder or an original single file, offline.

    With ``require_edit`` a model whose UNet is not an InstructPix2Pix UNet (8 input channels) is
    refused before its weights are read.
    """
    path = Path(path)
    kind = detect_format(path)
    if kind == "diffusers":
        missing = missing_diffusers_components(path)
        if missing:
            raise IP2PError(
                f"{path} is an incomplete diffusers model folder: missing {', '.join(missing)}. A diffusers model "
                f"needs model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/. Copy the missing "
                f"parts from the model's source (or re-save it with save_pretrained), or use its single-file version."
            )
    base, in_channels, edm = read_unet_facts(path)
    family = classify(base, in_channels, edm)
    if require_edit:
        require_edit_model(family, str(path))
    if family.base != "sd15":
        raise IP2PError(
            f"{path} is a {family.name} model; the headless backend loads SD 1.5 models only for now. "
            f"Use it through the ComfyUI nodes, or pass an SD 1.5 InstructPix2Pix model."
        )
    if kind == "diffusers":
        model = _load_diffusers(path, family, dtype)
    else:
        model = _load_single_file(path, family, dtype)
    for module in (model.unet, model.vae, model.text_encoder):
        _place(module, torch.device(device), dtype)
    return model


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move/cast only when needed (diffusers warns on every dtype cast)."""
    param = next(module.parameters())
    if (
        param.dtype != dtype
        or param.device.type != device.type
        or (device.index is not None and param.device != device)
    ):
        module.to(device=device, dtype=dtype)
    module.eval()


def _component_error(path: Path, name: str, exc: Exception) -> IP2PError:
    return IP2PError(
        f"Could not load {name}/ of the diffusers model {path}: {type(exc).__name__}: {exc}. "
        f"The folder may be incomplete or damaged: copy {name}/ again from the model's source."
    )


def _load_diffusers(path: Path, family, dtype: torch.dtype) -> EditModel:
    diffusers, transformers = _headless()
    modules = {}
    for name, cls in (("unet", diffusers.UNet2DConditionModel), ("vae", diffusers.AutoencoderKL)):
        try:
            modules[name] = cls.from_pretrained(str(path), subfolder=name, local_files_only=True, torch_dtype=dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            raise _component_error(path, name, exc) from exc
    try:
        text_encoder = transformers.CLIPTextModel.from_pretrained(str(path / "text_encoder"), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise _component_error(path, "text_encoder", exc) from exc
    try:
        tokenizer = load_clip_tokenizer(path / "tokenizer")
    except (OSError, ValueError) as exc:
        raise _component_error(path, "tokenizer", exc) from exc
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    try:
        scheduler_config = json.loads(scheduler_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _component_error(path, "scheduler", exc) from exc
    return EditModel(
        unet=modules["unet"],
        vae=modules["vae"],
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        family=family,
        model_hash=model_hash(path),
        source=str(path),
        extra={"format": "diffusers"},
    )


def _read_metadata(path: Path) -> dict:
    """Our metadata in a single file we wrote (empty for other files)."""
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        raw = (handle.metadata() or {}).get(META_KEY)
    if not raw:
        return {}
    try:
        metadata = json.loads(raw)
    except ValueError:
        logger.warning("Ignoring unreadable %r metadata in %s", META_KEY, path)
        return {}
    return metadata if isinstance(metadata, dict) else {}


def _on_meta(module_factory):
    with torch.device("meta"):
        return module_factory()


def _assign_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> torch.nn.Module:
    """Put ``state`` into a module built on the meta device (no second copy, no random init)."""
    expected = set(module.state_dict().keys())
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("position_ids")}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise IP2PError(
            f"The {what} weights in {path} do not fit the architecture read from them ({str(exc).splitlines()[0]}). "
            f"The file may be damaged or of an unsupported variant."
        ) from exc
    for name, buffer in list(module.named_buffers()):
        if buffer.device.type != "meta":
            continue
        if not name.endswith("position_ids"):
            raise IP2PError(f"The {what} in {path} has no value for {name}.")
        owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
        owner.register_buffer(
            name.rsplit(".", 1)[-1], torch.arange(buffer.shape[-1]).expand(buffer.shape).clone(), persistent=False
        )
    return module


def _text_to_module_layout(state: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Canonical ``text_model.*`` keys -> the keys this transformers version's CLIPTextModel uses
    (transformers 5 dropped the ``text_model`` wrapper; 4.x has it)."""
    if any(k.startswith(TEXT_MODEL) for k in module.state_dict()):
        return state
    return {k.removeprefix(TEXT_MODEL): v for k, v in state.items()}


def canonical_text_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CLIPTextModel's weights under the classic ``text_model.*`` keys, whatever the transformers version."""
    return {(k if k.startswith(TEXT_MODEL) else TEXT_MODEL + k): v for k, v in module.state_dict().items()}


def _single_file_tokenizer(path: Path, vocab_size: int, metadata: dict):
    source = str(metadata.get("tokenizer") or "")
    if source.startswith("synthetic") or vocab_size != CLIP_VOCAB_SIZE:
        if vocab_size != CLIP_VOCAB_SIZE and not source.startswith("synthetic"):
            logger.warning(
                "%s has a %d-token text vocabulary (CLIP has %d): using a synthetic tokenizer",
                path,
                vocab_size,
                CLIP_VOCAB_SIZE,
            )
        with tempfile.TemporaryDirectory(prefix="ip2p-tokenizer-") as tmp:
            write_synthetic_clip_tokenizer(tmp, vocab_size)
            return load_clip_tokenizer(tmp), f"synthetic:{vocab_size}"
    folder = find_tokenizer_dir()
    return load_clip_tokenizer(folder), str(folder)


def _load_single_file(path: Path, family, dtype: torch.dtype) -> EditModel:
    diffusers, transformers = _headless()
    state = load_single_file(path)  # first: it turns unreadable files into a clear error
    metadata = _read_metadata(path)
    configs = metadata.get("configs") or {}
    if EDM_VPRED_KEY in state:  # pragma: no cover - CosXL is SDXL, refused before this point
        raise IP2PError(f"{path} is an EDM v-prediction model, not supported headless yet.")
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}  # cast once, before building
    weights, chosen = convert.original_to_diffusers(state, configs)
    del state
    unet = _on_meta(lambda: diffusers.UNet2DConditionModel.from_config(chosen["unet"]))
    vae = _on_meta(lambda: diffusers.AutoencoderKL.from_config(chosen["vae"]))
    text_config = transformers.CLIPTextConfig(**chosen["text_encoder"])
    text_encoder = _on_meta(lambda: transformers.CLIPTextModel(text_config))
    unet = _assign_weights(unet, weights["unet"], "UNet", path)
    vae = _assign_weights(vae, weights["vae"], "VAE", path)
    text_state = _text_to_module_layout(weights["text_encoder"], text_encoder)
    text_encoder = _assign_weights(text_encoder, text_state, "text encoder", path)
    tokenizer, tokenizer_source = _single_file_tokenizer(path, text_config.vocab_size, metadata)
    return EditModel(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=configs.get("scheduler") or sd15_scheduler_config(),
        family=family,
        model_hash=model_hash(path),
        source=str(path),
        extra={"format": "single_file", "tokenizer_source": tokenizer_source},
    )


# --------------------------------------------------------------------------------------------
# Saving


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
    """Write a CLIP tokenizer as vocab.json + merges.txt (what diffusers and ComfyUI both read)."""
    vocab, merges = _tokenizer_vocab(tokenizer)
    return write_tokenizer_files(folder, vocab, merges)


def _save_text_encoder(text_encoder, folder: Path) -> None:
    """save_pretrained, with the weights under the classic ``text_model.*`` keys that every
    transformers version (and other tools reading diffusers folders) understands."""
    text_encoder.save_pretrained(folder, safe_serialization=True)
    weights = folder / "model.safetensors"
    if weights.is_file():
        save_safetensors_atomic(canonical_text_state(text_encoder), weights)


def save_diffusers(model: EditModel, folder: str | os.PathLike) -> Path:
    """Save ``model`` as a diffusers folder, atomically (built beside it, then renamed into place)."""
    diffusers, _ = _headless()
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        model.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        model.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        _save_text_encoder(model.text_encoder, tmp / "text_encoder")
        save_tokenizer(model.tokenizer, tmp / "tokenizer")
        scheduler_config = dict(model.scheduler_config)
        scheduler_config.setdefault("_class_name", "PNDMScheduler")
        scheduler_config["_diffusers_version"] = diffusers.__version__
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2), "utf-8")
        pipeline = "StableDiffusionInstructPix2PixPipeline" if model.family.is_edit_model else "StableDiffusionPipeline"
        index = {
            "_class_name": pipeline,
            "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", scheduler_config["_class_name"]],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2), "utf-8")
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


def save_single_file(model: EditModel, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Save ``model`` as one original-layout ``.safetensors`` file (ComfyUI's checkpoint loader reads it).

    The metadata records the exact configs (and a synthetic tokenizer, for random models), so
    the file loads back to the same modules.
    """
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise IP2PError(f"A single-file model is saved as .safetensors, got {path}. Choose a .safetensors path.")
    ours: dict = {"configs": model_configs(model)}
    tokenizer_source = str(model.extra.get("tokenizer_source", ""))
    if tokenizer_source.startswith("synthetic"):
        ours["tokenizer"] = tokenizer_source
    metadata = {META_KEY: json.dumps(ours, sort_keys=True)}
    return save_safetensors_atomic(original_state_dict(model, dtype), path, metadata=metadata)

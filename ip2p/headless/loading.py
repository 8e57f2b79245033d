"""Load models for the headless (diffusers) backend, fully offline.

Two formats: a diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``) and an original single file (``.safetensors``; ``.ckpt`` read
safely, see :mod:`ip2p.formats.checkpoint`). Single files are converted in memory and their modules
built from configs inferred from the weights, so nothing is ever fetched from a hub. Our own
single files also carry their exact configs in the safetensors metadata.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from ..errors import IP2PError
from ..formats import convert
from ..formats.checkpoint import (
    EDM_VPRED_KEY,
    META_KEY,
    detect_format,
    load_single_file,
    missing_diffusers_components,
    read_ip2p_metadata,
    read_json_object,
    read_unet_facts,
)
from ..formats.hashing import model_hash
from ..formats.tokenizer import (
    CLIP_VOCAB_SIZE,
    find_tokenizer_dir,
    load_clip_tokenizer,
    write_synthetic_clip_tokenizer,
)
from ..formats.toy_vocab import TOY_TOKENIZER, toy_tokenizer, toy_vocab_min_size
from ..model_family import classify, require_edit_model
from . import libraries
from .components import EditModel, text_to_module_layout
from .random_model import sd15_scheduler_config

logger = logging.getLogger(__name__)


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


def _brief(exc: BaseException) -> str:
    """``Type: first line`` of a library's error, short enough for a one-line message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _component_error(path: Path, name: str, exc: BaseException) -> IP2PError:
    return IP2PError(
        f"Could not load {path / name} (the {name}/ of the diffusers model {path}): {_brief(exc)}. "
        f"The folder may be incomplete or damaged: copy {name}/ again from the model's source."
    )


def _weights_kind(path: Path, name: str) -> str:
    """``"safetensors"`` or ``"pickle"`` (only ``.bin`` weights): which reader a component's weights need."""
    files = [p for p in (path / name).iterdir() if p.is_file()]
    if any(p.suffix.lower() == ".safetensors" for p in files):
        return "safetensors"
    if any(p.suffix.lower() == ".bin" for p in files):
        return "pickle"
    raise IP2PError(
        f"{path / name} holds no weights (expected *.safetensors, or *.bin). The folder may be incomplete: "
        f"copy {name}/ again from the model's source."
    )


def _built(config_file: Path, factory):
    """A module built on the meta device from a config; a config whose values do not fit names its file."""
    try:
        return _on_meta(factory)
    except IP2PError:
        raise
    except Exception as exc:  # diffusers/transformers raise anything from a bad value: TypeError, KeyError, ...
        raise IP2PError(
            f"{config_file} does not describe a model that can be built ({_brief(exc)}). Copy the file again "
            f"from the model's source, or re-save the model with save_pretrained."
        ) from exc


def _from_pickled_weights(path: Path, name: str, config: dict, build) -> torch.nn.Module:
    """A component whose weights are ``.bin`` pickles: built from its config, the weights read by our
    restricted reader (never diffusers'/transformers' own ``torch.load``)."""
    state = convert._component_weights(path, name)
    module = _built(path / name / "config.json", lambda: build(config))
    return _assign_weights(module, state, name, path / name)


def _load_diffusers(path: Path, family, dtype: torch.dtype) -> EditModel:
    diffusers, transformers = libraries()
    read_json_object(path / "model_index.json")
    modules = {}
    for name, cls in (("unet", diffusers.UNet2DConditionModel), ("vae", diffusers.AutoencoderKL)):
        config = read_json_object(path / name / "config.json")
        if _weights_kind(path, name) == "pickle":
            modules[name] = _from_pickled_weights(path, name, config, cls.from_config)
            continue
        try:
            modules[name] = cls.from_pretrained(
                str(path), subfolder=name, local_files_only=True, torch_dtype=dtype, use_safetensors=True
            )
        except Exception as exc:  # a damaged folder raises anything: OSError, KeyError, SafetensorError, ...
            raise _component_error(path, name, exc) from exc
    text_config = read_json_object(path / "text_encoder" / "config.json")
    if _weights_kind(path, "text_encoder") == "pickle":

        def build_text(config: dict) -> torch.nn.Module:
            return transformers.CLIPTextModel(transformers.CLIPTextConfig.from_dict(config))

        state = convert.text_original_to_diffusers(convert._component_weights(path, "text_encoder"))
        text_encoder = _built(path / "text_encoder" / "config.json", lambda: build_text(text_config))
        state = text_to_module_layout(state, text_encoder)
        text_encoder = _assign_weights(text_encoder, state, "text encoder", path / "text_encoder")
    else:
        try:
            text_encoder = transformers.CLIPTextModel.from_pretrained(
                str(path / "text_encoder"), local_files_only=True, use_safetensors=True
            )
        except Exception as exc:
            raise _component_error(path, "text_encoder", exc) from exc
    try:
        tokenizer = load_clip_tokenizer(path / "tokenizer")
    except IP2PError:
        raise
    except Exception as exc:
        raise _component_error(path, "tokenizer", exc) from exc
    scheduler_config = read_json_object(path / "scheduler" / "scheduler_config.json")
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


def _bad_configs(source: str, exc: BaseException, what: str = "model") -> IP2PError:
    return IP2PError(
        f"The {what} config in {source} does not fit a Stable Diffusion model ({_brief(exc)}). Re-export the model "
        f"with this toolkit, or remove the {META_KEY!r} entry to load it with configs inferred from the weights."
    )


def _built_from(source: str, what: str, factory) -> torch.nn.Module:
    try:
        return _on_meta(factory)
    except IP2PError:
        raise
    except Exception as exc:  # diffusers/transformers raise anything from a bad config value
        raise _bad_configs(source, exc, what) from exc


def _single_file_tokenizer(path: Path, vocab_size: int, metadata: dict):
    """The tokenizer a single file's metadata names (a file carries none), and where it came from.

    ``"toy"``: the toy vocabulary at the text encoder's size; ``"synthetic:N"`` (or no record with a
    vocabulary that is not CLIP's): a synthetic one; no record: CLIP's, found offline.
    """
    source = str(metadata.get("tokenizer") or "")
    if source == TOY_TOKENIZER:
        if vocab_size < toy_vocab_min_size():
            raise IP2PError(
                f"{path} names the toy tokenizer, but its text encoder has only {vocab_size} tokens (the toy "
                f"vocabulary needs {toy_vocab_min_size()}). The file is damaged or was edited: re-export the model."
            )
        return toy_tokenizer(vocab_size), TOY_TOKENIZER
    if source and not source.startswith("synthetic"):
        raise IP2PError(
            f"{path} names a tokenizer this version does not know ({source!r}; known: {TOY_TOKENIZER!r}, "
            f"'synthetic:N', none for CLIP's). Update comfyui-ip2p, or re-export the model with this version."
        )
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
    diffusers, transformers = libraries()
    state = load_single_file(path)  # first: it turns unreadable files into a clear error
    metadata = read_ip2p_metadata(path)
    configs = metadata.get("configs") or {}
    if EDM_VPRED_KEY in state:  # pragma: no cover - CosXL is SDXL, refused before this point
        raise IP2PError(f"{path} is an EDM v-prediction model, not supported headless yet.")
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}  # cast once, before building
    source = f"the {META_KEY!r} metadata of {path}" if configs else f"the configs inferred from {path}"
    try:
        weights, chosen = convert.original_to_diffusers(state, configs)
    except IP2PError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise _bad_configs(source, exc) from exc
    del state
    unet = _built_from(source, "UNet", lambda: diffusers.UNet2DConditionModel.from_config(chosen["unet"]))
    vae = _built_from(source, "VAE", lambda: diffusers.AutoencoderKL.from_config(chosen["vae"]))
    text_encoder = _built_from(
        source,
        "text encoder",
        lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig(**chosen["text_encoder"])),
    )
    text_config = text_encoder.config
    unet = _assign_weights(unet, weights["unet"], "UNet", path)
    vae = _assign_weights(vae, weights["vae"], "VAE", path)
    text_state = text_to_module_layout(weights["text_encoder"], text_encoder)
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

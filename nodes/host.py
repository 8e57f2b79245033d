"""Every probe of the ComfyUI host in one place.

The pack supports ComfyUI from late 2024 (the first with custom guiders and InstructPix2Pix model
detection) to current releases. Where hosts differ — the VAE's posterior sampling, preview
support, server-only modules — the difference is handled here and nowhere else.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch

from ..ip2p.errors import IP2PError

UPDATE_COMFYUI = "Please update ComfyUI (InstructPix2Pix support needs ComfyUI 0.3 or newer)."


def require_custom_guiders() -> None:
    """Fail clearly on hosts that predate custom guiders (CFGGuider, calc_cond_batch)."""
    if not (hasattr(comfy.samplers, "CFGGuider") and hasattr(comfy.samplers, "calc_cond_batch")):
        raise IP2PError(f"This ComfyUI has no custom guider support. {UPDATE_COMFYUI}")


def unet_in_channels(model_patcher) -> int:
    """Input channels of the model's UNet (8 for InstructPix2Pix), read off its first conv."""
    unet = model_patcher.model.diffusion_model
    first = unet.input_blocks[0][0]
    return int(first.in_channels if hasattr(first, "in_channels") else first.weight.shape[1])


def is_ip2p_model(model_patcher) -> bool:
    """True when ComfyUI will feed the input-image latent to this model (its IP2P model classes)."""
    model_base = importlib.import_module("comfy.model_base")
    ip2p_base = getattr(model_base, "IP2P", None)
    if ip2p_base is not None and isinstance(model_patcher.model, ip2p_base):
        return True
    return unet_in_channels(model_patcher) == 8 and hasattr(model_patcher.model, "process_ip2p_image_in")


def require_ip2p_model(model_patcher, source: str = "The connected MODEL") -> None:
    if is_ip2p_model(model_patcher):
        return
    channels = unet_in_channels(model_patcher)
    if channels == 8:
        raise IP2PError(
            f"{source} has 8 input channels but this ComfyUI does not treat it as InstructPix2Pix. {UPDATE_COMFYUI}"
        )
    raise IP2PError(
        f"{source} is not an InstructPix2Pix model: its UNet takes {channels} input channels, an "
        "InstructPix2Pix UNet takes 8 (noisy latent + input-image latent). Load an InstructPix2Pix "
        "checkpoint with 'Load InstructPix2Pix Checkpoint'."
    )


@contextlib.contextmanager
def _posterior_mode(vae) -> Iterator[None]:
    """Make ``vae.encode`` return the posterior's mode (2024 hosts sample it; current ones don't)."""
    regularizer = getattr(getattr(vae, "first_stage_model", None), "regularization", None)
    if regularizer is None or not hasattr(regularizer, "sample"):
        yield
        return
    previous = regularizer.sample
    regularizer.sample = False
    try:
        yield
    finally:
        regularizer.sample = previous


def encode_mode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """The unscaled latent ``vae.encode(x).mode()`` of BHWC pixels in [0, 1], on every host."""
    with _posterior_mode(vae):
        return vae.encode(pixels[..., :3])


def step_callback(model_patcher, steps: int) -> Callable:
    """The sampler callback: previews and progress where the server offers them, progress otherwise."""
    try:
        latent_preview = importlib.import_module("latent_preview")
    except ImportError:  # library-only hosts have no server modules
        latent_preview = None
    if latent_preview is not None:
        return latent_preview.prepare_callback(model_patcher, steps)
    bar = comfy.utils.ProgressBar(steps)

    def callback(step, x0, x, total_steps):
        bar.update_absolute(step + 1, total_steps)

    return callback


def progress_bar(total: int):
    return comfy.utils.ProgressBar(total)


def throw_if_interrupted() -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()


def progress_disabled() -> bool:
    return not getattr(comfy.utils, "PROGRESS_BAR_ENABLED", True)


def folder_paths():
    """ComfyUI's folder registry (a server module), imported on first use."""
    try:
        return importlib.import_module("folder_paths")
    except ImportError as error:
        raise IP2PError(
            f"ComfyUI's folder_paths module is missing: run these nodes inside ComfyUI. ({error})"
        ) from error


def model_files(folder: str) -> list[str]:
    try:
        return folder_paths().get_filename_list(folder)
    except (IP2PError, KeyError):
        return []


def full_path(folder: str, name: str) -> str:
    path = folder_paths().get_full_path(folder, name)
    if path is None:
        raise IP2PError(f"'{name}' was not found in ComfyUI's '{folder}' folders. Put the model there and refresh.")
    return path


def register_model_folder(name: str) -> None:
    """Register ``models/<name>`` with ComfyUI (on a server; extra_model_paths.yaml may add more paths)."""
    try:
        registry = folder_paths()
    except IP2PError:
        return
    models_dir = getattr(registry, "models_dir", None)
    if models_dir is not None:
        registry.add_model_folder_path(name, os.path.join(models_dir, name), is_default=True)


def _folder_roots(folder: str) -> list[str]:
    try:
        return folder_paths().get_folder_paths(folder)
    except (IP2PError, KeyError):
        return []


def model_folders(folder: str, marker: str) -> list[str]:
    """Model folders (each holding ``marker``) under ComfyUI's ``folder`` paths, relative to their root."""
    found = []
    for root in _folder_roots(folder):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            if marker in filenames:
                found.append(os.path.relpath(dirpath, root))
                dirnames.clear()
    return sorted(found)


def model_folder_path(folder: str, name: str, marker: str) -> str:
    for root in _folder_roots(folder):
        path = os.path.join(root, name)
        if os.path.isfile(os.path.join(path, marker)):
            return path
    raise IP2PError(f"No model folder '{name}' under ComfyUI's '{folder}' paths. Put it there and refresh.")


def diffusers_folders() -> list[str]:
    """Diffusers model folders (holding model_index.json) under ComfyUI's 'diffusers' paths."""
    return model_folders("diffusers", "model_index.json")


def diffusers_folder_path(name: str) -> str:
    return model_folder_path("diffusers", name, "model_index.json")


def input_directory() -> str | None:
    """ComfyUI's input folder, where relative file names of the dataset nodes point (None off a server)."""
    try:
        getter = getattr(folder_paths(), "get_input_directory", None)
    except IP2PError:
        return None
    return getter() if getter else None


def embedding_directory():
    try:
        return folder_paths().get_folder_paths("embeddings")
    except (IP2PError, KeyError):
        return None

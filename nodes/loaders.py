"""Loaders that give ComfyUI's native MODEL, CLIP and VAE for InstructPix2Pix checkpoints.

A file is checked before its weights are read (8 input channels, from the header), .ckpt files go
through the core's restricted unpickler, and diffusers folders — which current ComfyUI cannot load
for an 8-channel SD 1.5 UNet — are converted to the original layout in memory.
"""

from __future__ import annotations

import comfy.sd

from ..ip2p import model_family
from ..ip2p.errors import IP2PError
from ..ip2p.formats import checkpoint, convert
from . import host
from .inputs import CATEGORY


def load_checked(path: str, source: str, read_state_dict) -> tuple:
    """(MODEL, CLIP, VAE) of an InstructPix2Pix model; others are refused before their weights are read."""
    model_family.require_edit_model(checkpoint.inspect_model(path), source)
    return load_state_dict(read_state_dict(path), source)


def load_state_dict(state_dict: dict, source: str):
    """(MODEL, CLIP, VAE) from an original-layout state dict, refusing non-InstructPix2Pix models."""
    loaded = comfy.sd.load_state_dict_guess_config(
        state_dict, output_vae=True, output_clip=True, embedding_directory=host.embedding_directory()
    )
    if loaded is None or loaded[0] is None:
        raise IP2PError(f"ComfyUI could not recognise the model in {source}. {host.UPDATE_COMFYUI}")
    model, clip, vae = loaded[:3]
    host.require_ip2p_model(model, source)
    return model, clip, vae


class _Loader:
    CATEGORY = f"{CATEGORY}/loaders"
    FUNCTION = "execute"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")


class IP2PCheckpointLoader(_Loader):
    NODE_ID = "IP2PCheckpointLoader"
    DISPLAY_NAME = "Load InstructPix2Pix Checkpoint"
    DESCRIPTION = (
        "Loads an InstructPix2Pix single-file checkpoint (.safetensors, or .ckpt without running any code in it) "
        "from models/checkpoints and refuses models that are not InstructPix2Pix."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": (
                    host.model_files("checkpoints"),
                    {"tooltip": "An InstructPix2Pix checkpoint in models/checkpoints."},
                ),
            }
        }

    @classmethod
    def execute(cls, ckpt_name):
        path = host.full_path("checkpoints", ckpt_name)
        return load_checked(path, ckpt_name, checkpoint.load_single_file)


class IP2PDiffusersLoader(_Loader):
    NODE_ID = "IP2PDiffusersLoader"
    DISPLAY_NAME = "Load InstructPix2Pix (diffusers folder)"
    DESCRIPTION = (
        "Loads an InstructPix2Pix model saved as a diffusers folder (unet/, vae/, text_encoder/, ...) from "
        "models/diffusers, e.g. the trainer's output or timbrooks/instruct-pix2pix."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_path": (host.diffusers_folders(), {"tooltip": "A diffusers model folder in models/diffusers."}),
            }
        }

    @classmethod
    def execute(cls, model_path):
        path = host.diffusers_folder_path(model_path)
        return load_checked(path, model_path, convert.load_diffusers_as_original)

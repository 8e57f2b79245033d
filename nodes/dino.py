"""A local DINO vision transformer as a node, for the DINO metric of 'InstructPix2Pix Evaluate'.

Like the CLIP scorer it has its own model folder, ``models/ip2p_dino`` (``DINO_FOLDER``), and
ComfyUI's model management loads and frees it.
"""

from __future__ import annotations

import comfy.model_management

from ..ip2p.quality.dino import DinoScorer
from . import host
from .clip import BY_PATH, MODEL_MARKER, ManagedModel, chosen_folder, scorer_dtype
from .inputs import CATEGORY

DINO_FOLDER = "ip2p_dino"
DINO = "IP2P_DINO"


class IP2PDINOLoader:
    NODE_ID = "IP2PDINOLoader"
    DISPLAY_NAME = "InstructPix2Pix DINO Loader"
    DESCRIPTION = (
        "Loads a DINO vision transformer in transformers format (config.json with model_type 'vit' or 'dinov2', and "
        "its weights — e.g. a local copy of facebook/dino-vits16, MagicBrush's) from "
        f"models/{DINO_FOLDER}, or from any folder given as path, for the DINO metric. Nothing is downloaded."
    )
    CATEGORY = f"{CATEGORY}/quality"
    FUNCTION = "execute"
    RETURN_TYPES = (DINO,)
    RETURN_NAMES = ("dino_scorer",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dino_model": ([BY_PATH, *host.model_folders(DINO_FOLDER, MODEL_MARKER)], {"tooltip": f"A folder in models/{DINO_FOLDER}."}),
                "path": ("STRING", {"default": "", "tooltip": f"A DINO folder anywhere; used when dino_model is {BY_PATH}."}),
            }
        }  # fmt: skip

    @classmethod
    def execute(cls, dino_model, path):
        folder = chosen_folder(DINO_FOLDER, dino_model, path, "DINO")
        device = comfy.model_management.unet_offload_device()
        return (ManagedModel(DinoScorer.from_folder(folder, device=device, dtype=scorer_dtype()), folder),)

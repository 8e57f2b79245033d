"""Every input definition the nodes share, and the pack's category root.

Saved workflows store widget values by position: an input's name, type and place must not change
(tests/comfy_lib/node_snapshot.json records them).
"""

from __future__ import annotations

import comfy.samplers

from ..ip2p import guidance, sizing

CATEGORY = "InstructPix2Pix"


def cfg_input(default: float, tooltip: str) -> tuple:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": tooltip})


GUIDANCE_INPUTS = {
    "text_cfg": cfg_input(guidance.DEFAULT_TEXT_CFG, "How strongly to follow the instruction (s_T)."),
    "image_cfg": cfg_input(guidance.DEFAULT_IMAGE_CFG, "How closely to keep to the input image (s_I)."),
}

RESIZE_INPUTS = {
    "resize": (
        list(sizing.RESIZE_POLICIES),
        {
            "default": "paper",
            "tooltip": "paper: long side to max_side, sides multiples of 64, centre-cropped (the paper's setting). "
            "keep: edit at the input size rounded to multiples of 8 and return the input size.",
        },
    ),
    "max_side": (
        "INT",
        {
            "default": sizing.DEFAULT_MAX_SIDE,
            "min": 64,
            "max": 4096,
            "step": 64,
            "tooltip": "Long side for resize=paper.",
        },
    ),
}

MODEL_IMAGE_INPUTS = {
    "model": ("MODEL", {"tooltip": "An InstructPix2Pix model (8-channel UNet)."}),
    "vae": ("VAE", {"tooltip": "The model's VAE."}),
    "image": ("IMAGE", {"tooltip": "The image(s) to edit."}),
}

TEXT_INPUTS = {
    "instruction": (
        "STRING",
        {
            "multiline": True,
            "default": "",
            "tooltip": "What to change, e.g. 'turn the sky into a sunset'. Empty returns the image unchanged.",
        },
    ),
    "negative": (
        "STRING",
        {"multiline": True, "default": "", "tooltip": "Negative prompt; empty is the paper's setting."},
    ),
}

SAMPLING_INPUTS = {
    "seed": (
        "INT",
        {
            "default": 0,
            "min": 0,
            "max": 0xFFFFFFFFFFFFFFFF,
            "control_after_generate": True,
            "tooltip": "Noise seed (ComfyUI's convention).",
        },
    ),
    "steps": ("INT", {"default": 100, "min": 1, "max": 10000, "tooltip": "Sampling steps (the paper: 100)."}),
}


def sampler_inputs() -> dict:
    """The host's own sampler and scheduler lists, read when a node's inputs are asked for."""
    return {
        "sampler_name": (
            comfy.samplers.KSampler.SAMPLERS,
            {"default": "euler_ancestral", "tooltip": "Sampler (the paper: Euler ancestral)."},
        ),
        "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal", "tooltip": "Noise schedule."}),
    }


OPTIONAL_COND_INPUTS = {
    "clip": (
        "CLIP",
        {"tooltip": "Encodes the instruction and negative (not needed when both CONDITIONING inputs are connected)."},
    ),
    "positive": ("CONDITIONING", {"tooltip": "Use this instead of encoding the instruction."}),
    "negative_conditioning": ("CONDITIONING", {"tooltip": "Use this instead of encoding the negative text."}),
}

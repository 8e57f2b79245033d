"""Input definitions and small conversions the nodes share."""

from __future__ import annotations

import torch

from ..ip2p import sizing

CATEGORY = "InstructPix2Pix"


def cfg_input(default: float, tooltip: str) -> tuple:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": tooltip})


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


def image_to_working_size(pixels: torch.Tensor, resize: str, max_side: int) -> torch.Tensor:
    """BHWC pixels at the working size of the resize policy (the sizes are checked first)."""
    height, width = pixels.shape[1:3]
    sizing.check_input_size(width, height)
    return sizing.prepare(pixels.movedim(-1, 1), resize, max_side).movedim(1, -1).contiguous()


def image_to_size(pixels: torch.Tensor, size: tuple[int, int], resize: str) -> torch.Tensor:
    """Edited BHWC pixels at the size the policy returns (the input's own size for "keep")."""
    return sizing.restore(pixels.movedim(-1, 1), size, resize).movedim(1, -1).contiguous()

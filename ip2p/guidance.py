"""InstructPix2Pix dual classifier-free guidance (Brooks et al. 2023, eq. 3).

    e = e(z,∅,∅) + s_T·(e(z,c_I,c_T) − e(z,c_I,∅)) + s_I·(e(z,c_I,∅) − e(z,∅,∅))

Both backends (the ComfyUI guider and the headless editor) build their batch from
:func:`branches_needed` in :data:`BRANCH_ORDER` and hand the predictions to :func:`combine`,
so they cannot drift apart. Unlike diffusers we never switch guidance off for
``image_cfg < 1`` or ``text_cfg <= 1``: those are legitimate settings.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping

import torch

from .errors import IP2PError

DEFAULT_TEXT_CFG = 7.5  # s_T, the paper's default for SD 1.5
DEFAULT_IMAGE_CFG = 1.5  # s_I, the paper's default for SD 1.5


class Branch(enum.Enum):
    """One conditioning of the UNet: which of (image, text) it sees."""

    FULL = "full"  # e(z, c_I, c_T): input image and instruction
    IMAGE = "image"  # e(z, c_I, ∅): input image, empty (or negative) text
    UNCOND = "uncond"  # e(z, ∅, ∅): all-zeros image latent, empty (or negative) text

    @property
    def has_image(self) -> bool:
        return self is not Branch.UNCOND

    @property
    def has_text(self) -> bool:
        return self is Branch.FULL


# The batch order of diffusers' StableDiffusionInstructPix2PixPipeline; both backends use it.
BRANCH_ORDER = (Branch.FULL, Branch.IMAGE, Branch.UNCOND)


def validate_scales(text_cfg: float, image_cfg: float) -> None:
    """Reject scales that cannot be meant (NaN, infinite, negative) with a fixable message."""
    for name, value in (("text_cfg", text_cfg), ("image_cfg", image_cfg)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise IP2PError(f"{name} must be a number, got {value!r}.")
        if not math.isfinite(value):
            raise IP2PError(
                f"{name} is {value}; give a finite number such as {DEFAULT_TEXT_CFG if name == 'text_cfg' else DEFAULT_IMAGE_CFG}."
            )
        if value < 0:
            raise IP2PError(
                f"{name} is {value}, but guidance scales must be ≥ 0 "
                f"(0 ignores that input, 1 applies it without extra guidance)."
            )


def branches_needed(text_cfg: float, image_cfg: float) -> tuple[Branch, ...]:
    """The branches the formula needs, in :data:`BRANCH_ORDER`.

    With s_I = 1 the e(z,∅,∅) terms cancel (two branches); with s_T = s_I = 1 only the full
    branch is left. Exact in algebra; in floats the shortcuts agree to ~1e-5.
    """
    validate_scales(text_cfg, image_cfg)
    if image_cfg == 1.0:
        return (Branch.FULL,) if text_cfg == 1.0 else (Branch.FULL, Branch.IMAGE)
    return BRANCH_ORDER


def combine(predictions: Mapping[Branch, torch.Tensor], text_cfg: float, image_cfg: float) -> torch.Tensor:
    """Combine the branch predictions into the guided prediction.

    ``predictions`` must hold at least the branches of :func:`branches_needed`.
    """
    needed = branches_needed(text_cfg, image_cfg)
    missing = [b.value for b in needed if b not in predictions]
    if missing:
        raise ValueError(f"guidance needs the branches {missing} for text_cfg={text_cfg}, image_cfg={image_cfg}")
    full = predictions[Branch.FULL]
    if needed == (Branch.FULL,):
        return full
    image = predictions[Branch.IMAGE]
    if needed == (Branch.FULL, Branch.IMAGE):
        return image + text_cfg * (full - image)
    uncond = predictions[Branch.UNCOND]
    return uncond + text_cfg * (full - image) + image_cfg * (image - uncond)


def combine_batch(
    batched: torch.Tensor, branches: tuple[Branch, ...], text_cfg: float, image_cfg: float
) -> torch.Tensor:
    """:func:`combine` for one batched model output laid out as ``branches`` stacked on dim 0."""
    chunks = batched.chunk(len(branches))
    return combine(dict(zip(branches, chunks, strict=True)), text_cfg, image_cfg)

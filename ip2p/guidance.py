"""InstructPix2Pix dual classifier-free guidance (Brooks et al. 2023, eq. 3).

    e = e(z,∅,∅) + s_T·(e(z,c_I,c_T) − e(z,c_I,∅)) + s_I·(e(z,c_I,∅) − e(z,∅,∅))

One :class:`Guidance` value holds the two scales, checked once when it is made. It knows which
branches the formula needs (in :data:`BRANCH_ORDER`) and combines their predictions, so the
headless editor, the ComfyUI guider and the guidance sweep cannot drift apart. Unlike diffusers we
never switch guidance off for ``image_cfg < 1`` or ``text_cfg <= 1``: those are legitimate settings.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .errors import IP2PError

DEFAULT_TEXT_CFG = 7.5  # s_T, the paper's default for SD 1.5
DEFAULT_IMAGE_CFG = 1.5  # s_I, the paper's default for SD 1.5
MAX_CFG = 100.0  # far beyond any useful scale; larger ones overflow fp16 predictions into NaN


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
_DEFAULTS = {"text_cfg": DEFAULT_TEXT_CFG, "image_cfg": DEFAULT_IMAGE_CFG}


def check_scale(name: str, value: object) -> float:
    """``value`` as a float, or an error naming ``name`` when no sane scale is meant."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise IP2PError(f"{name} must be a number, got {value!r}.")
    example = _DEFAULTS.get(name, DEFAULT_TEXT_CFG)
    if not math.isfinite(value):
        raise IP2PError(f"{name} is {value}; give a finite number such as {example}.")
    if value < 0:
        raise IP2PError(
            f"{name} is {value}, but guidance scales must be ≥ 0 (0 ignores that input, 1 applies it without "
            f"extra guidance)."
        )
    if value > MAX_CFG:
        raise IP2PError(
            f"{name} is {value}, above the limit of {MAX_CFG:g}: such scales overflow into NaN images. "
            f"Useful values lie around {example}."
        )
    return float(value)


@dataclass(frozen=True)
class Guidance:
    """The two guidance scales, valid by construction, and what follows from them."""

    text_cfg: float = DEFAULT_TEXT_CFG  # s_T
    image_cfg: float = DEFAULT_IMAGE_CFG  # s_I

    def __post_init__(self) -> None:
        object.__setattr__(self, "text_cfg", check_scale("text_cfg", self.text_cfg))
        object.__setattr__(self, "image_cfg", check_scale("image_cfg", self.image_cfg))

    @property
    def branches(self) -> tuple[Branch, ...]:
        """The branches the formula needs, in :data:`BRANCH_ORDER`.

        With s_I = 1 the e(z,∅,∅) terms cancel (two branches); with s_T = s_I = 1 only the full
        branch is left. Exact in algebra; in floats the shortcuts agree to ~1e-5.
        """
        if self.image_cfg == 1.0:
            return (Branch.FULL,) if self.text_cfg == 1.0 else (Branch.FULL, Branch.IMAGE)
        return BRANCH_ORDER

    def combine(self, predictions: Mapping[Branch, torch.Tensor]) -> torch.Tensor:
        """The guided prediction from ``predictions``, which hold at least :attr:`branches`."""
        needed = self.branches
        missing = [b.value for b in needed if b not in predictions]
        if missing:
            raise ValueError(f"guidance needs the branches {missing} for {self}")
        full = predictions[Branch.FULL]
        if needed == (Branch.FULL,):
            return full
        image = predictions[Branch.IMAGE]
        if needed == (Branch.FULL, Branch.IMAGE):
            return image + self.text_cfg * (full - image)
        uncond = predictions[Branch.UNCOND]
        return uncond + self.text_cfg * (full - image) + self.image_cfg * (image - uncond)

    def combine_batch(self, batched: torch.Tensor) -> torch.Tensor:
        """:meth:`combine` for one model output laid out as :attr:`branches` stacked on dim 0."""
        chunks = batched.chunk(len(self.branches))
        return self.combine(dict(zip(self.branches, chunks, strict=True)))

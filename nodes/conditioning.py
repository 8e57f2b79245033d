"""The conditioning side of InstructPix2Pix: the input image's latent attached to both prompts.

ComfyUI's InstructPix2Pix models read the input-image latent from the conditioning's
``concat_latent_image`` option and apply their own scaling convention to it, so the latent
attached here is the VAE posterior's mode, unscaled.
"""

from __future__ import annotations

import torch

from ..ip2p import sizing
from ..ip2p.errors import IP2PError
from . import host
from .inputs import CATEGORY, RESIZE_INPUTS

CONCAT_KEY = "concat_latent_image"  # where ComfyUI's IP2P models read the input-image latent


def image_to_working_size(pixels: torch.Tensor, resize: str, max_side: int) -> torch.Tensor:
    """BHWC pixels at the working size of the resize policy (the sizes are checked first)."""
    height, width = pixels.shape[1:3]
    sizing.check_input_size(width, height)
    return sizing.prepare(pixels.movedim(-1, 1), resize, max_side).movedim(1, -1).contiguous()


@torch.no_grad()
def image_latent(vae, pixels: torch.Tensor, resize: str, max_side: int) -> torch.Tensor:
    """The unscaled posterior-mode latent of BHWC ``pixels`` at the policy's working size."""
    return host.encode_mode(vae, image_to_working_size(pixels, resize, max_side))


def encode_text(clip, text: str) -> list:
    """CONDITIONING for ``text``, as ComfyUI's CLIPTextEncode makes it."""
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def resolve_conditioning(clip, instruction: str, negative: str, positive_cond, negative_cond) -> tuple[list, list]:
    """Conditioning from the optional CONDITIONING inputs, else from CLIP and the two texts."""
    if positive_cond is not None and negative_cond is not None:
        return positive_cond, negative_cond
    if clip is None:
        raise IP2PError(
            "Nothing to encode the instruction with: connect a CLIP, or both the positive and negative CONDITIONING inputs."
        )
    positive = positive_cond if positive_cond is not None else encode_text(clip, instruction)
    negative_out = negative_cond if negative_cond is not None else encode_text(clip, negative)
    return positive, negative_out


def with_values(conditioning: list, **values) -> list:
    """A copy of ``conditioning`` with ``values`` set in every entry's options (inputs untouched)."""
    return [[tensor, {**options, **values}] for tensor, options in conditioning]


def without_image(conditioning: list) -> list:
    """The "no image" conditioning: the input-image latent replaced by zeros."""
    out = []
    for tensor, options in conditioning:
        image = options.get(CONCAT_KEY)
        if image is None:
            raise IP2PError(
                "The negative conditioning carries no input image. Connect it through 'InstructPix2Pix Conditioning'."
            )
        out.append([tensor, {**options, CONCAT_KEY: torch.zeros_like(image)}])
    return out


def check_batches(conditioning: list, image_batch: int, name: str) -> None:
    for tensor, _ in conditioning:
        if tensor.shape[0] not in (1, image_batch):
            raise IP2PError(
                f"The {name} conditioning has batch size {tensor.shape[0]} but the image batch has {image_batch}. "
                "Give one prompt (batch 1) or one per image."
            )


def attach_image(positive: list, negative: list, latent: torch.Tensor) -> tuple[list, list]:
    """Both conditionings carrying the (unscaled) input-image latent; the model applies its convention."""
    check_batches(positive, latent.shape[0], "positive")
    check_batches(negative, latent.shape[0], "negative")
    return with_values(positive, **{CONCAT_KEY: latent}), with_values(negative, **{CONCAT_KEY: latent})


class IP2PConditioning:
    NODE_ID = "IP2PConditioning"
    DISPLAY_NAME = "InstructPix2Pix Conditioning"
    DESCRIPTION = (
        "Attaches the input image's latent (the VAE posterior's mode, unscaled; the model applies its own "
        "convention) to both conditionings, and gives an empty LATENT of the working size to sample into."
    )
    CATEGORY = f"{CATEGORY}/conditioning"
    FUNCTION = "execute"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "The encoded instruction."}),
                "negative": ("CONDITIONING", {"tooltip": "The encoded empty or negative prompt."}),
                "vae": ("VAE", {"tooltip": "The model's VAE, to encode the input image."}),
                "pixels": ("IMAGE", {"tooltip": "The image to edit."}),
                **RESIZE_INPUTS,
            }
        }

    @classmethod
    def execute(cls, positive, negative, vae, pixels, resize, max_side):
        latent = image_latent(vae, pixels, resize, max_side)
        positive, negative = attach_image(positive, negative, latent)
        return positive, negative, {"samples": torch.zeros_like(latent)}

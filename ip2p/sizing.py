"""Working resolution for an edit: the paper's policy or the input's own size.

"paper": scale the long side to ``max_side`` and round both sides to multiples of 64, never
above ``max_side`` (the paper's own formula can overshoot for extreme aspect ratios), then
fit-crop. "keep": edit at the input size rounded to multiples of 8, return the input size.
Images are float tensors laid out (B, C, H, W) in [0, 1] or [-1, 1]; sizes are (width, height).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .errors import IP2PError

RESIZE_POLICIES = ("paper", "keep")
DEFAULT_MAX_SIDE = 512  # the paper's edit resolution for SD 1.5; a model's own size comes from model_max_side
MIN_SIDE = 8  # one latent pixel
DEFAULT_MAX_INPUT_SIDE = 8192  # larger inputs are refused before anything is allocated
MAX_MAX_SIDE = 4096  # the largest working long side offered: 8× SD 1.5's native size, already minutes a step
MAX_MAX_INPUT_SIDE = 16384  # the largest input limit offered (16384² RGB floats are 3 GiB)


def check_input_size(width: int, height: int, max_input_side: int = DEFAULT_MAX_INPUT_SIDE) -> None:
    """Refuse images too small to encode or too large to be meant."""
    if min(width, height) < MIN_SIDE:
        raise IP2PError(
            f"The image is {width}×{height} px; both sides must be at least {MIN_SIDE} px "
            f"(one latent pixel). Use a larger image."
        )
    if max(width, height) > max_input_side:
        raise IP2PError(
            f"The image is {width}×{height} px, over the limit of {max_input_side} px per side. "
            f"Downscale it first, or raise the limit (--max-input-side / max_input_side)."
        )


def model_max_side(unet_config: Mapping, vae_config: Mapping) -> int:
    """The long side a model was trained at: ``unet.sample_size × vae_scale_factor``.

    ``vae_scale_factor`` is ``2 ** (len(vae.block_out_channels) - 1)``: SD 1.5 gives 64 × 8 = 512,
    the toy model 16 × 4 = 64. The configs are diffusers' (any mapping); a ``(height, width)``
    sample size gives its longer side. The result is a multiple of 64 from 64 to :data:`MAX_MAX_SIDE`
    (what the paper policy accepts); a config without a usable sample size gives :data:`DEFAULT_MAX_SIDE`.
    """
    sample_size = unet_config.get("sample_size")
    if isinstance(sample_size, (list, tuple)) and sample_size:
        sample_size = max(sample_size)
    blocks = vae_config.get("block_out_channels")
    if not _is_positive_int(sample_size) or not isinstance(blocks, (list, tuple)) or not blocks:
        return DEFAULT_MAX_SIDE
    side = int(sample_size) * 2 ** (len(blocks) - 1)
    return min(MAX_MAX_SIDE, max(64, side // 64 * 64))


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def paper_size(width: int, height: int, max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """(width, height) for the "paper" policy: long side → max_side, sides multiples of 64."""
    if max_side < 64:
        raise IP2PError(f"max_side is {max_side}; the paper policy needs at least 64 (try 512).")
    long_side = (max_side // 64) * 64
    short_in, long_in = sorted((width, height))
    # Round the short side up, as the paper does, but never past the long side.
    short_side = min(long_side, max(64, math.ceil(short_in * long_side / long_in / 64) * 64))
    return (long_side, short_side) if width >= height else (short_side, long_side)


def keep_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) for the "keep" policy: nearest multiples of 8 (at least 8)."""
    return max(8, int(width / 8 + 0.5) * 8), max(8, int(height / 8 + 0.5) * 8)  # halves round up


def working_size(width: int, height: int, policy: str, max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    if policy == "paper":
        return paper_size(width, height, max_side)
    if policy == "keep":
        return keep_size(width, height)
    raise IP2PError(f"Unknown resize policy {policy!r}; choose one of {', '.join(RESIZE_POLICIES)}.")


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample (B, C, H, W) images to (width, height); the identity when already that size."""
    width, height = size
    if images.shape[-2:] == (height, width):
        return images
    antialias = height < images.shape[-2] or width < images.shape[-1]
    out = F.interpolate(images.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=antialias)
    return out.clamp(images.min().item(), images.max().item()).to(images.dtype)


def fit_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale (B, C, H, W) images to cover (width, height), then centre-crop to it."""
    width, height = size
    in_h, in_w = images.shape[-2:]
    if (in_h, in_w) == (height, width):
        return images
    scale = max(width / in_w, height / in_h)
    scaled_w, scaled_h = max(width, round(in_w * scale)), max(height, round(in_h * scale))
    scaled = resize(images, (scaled_w, scaled_h))
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return scaled[..., top : top + height, left : left + width]


def prepare(images: torch.Tensor, policy: str, max_side: int = DEFAULT_MAX_SIDE) -> torch.Tensor:
    """The images at their working size under ``policy`` (fit-crop for paper, resize for keep)."""
    height, width = images.shape[-2:]
    size = working_size(width, height, policy, max_side)
    return fit_crop(images, size) if policy == "paper" else resize(images, size)


def restore(edited: torch.Tensor, original_size: tuple[int, int], policy: str) -> torch.Tensor:
    """The edited images at the size the policy returns: the input size for "keep"."""
    return resize(edited, original_size) if policy == "keep" else edited

"""A local DINO vision transformer that embeds images for the DINO metric (MagicBrush's image similarity).

Any transformers ViT or Dinov2 folder (``config.json`` with ``model_type`` ``vit`` or ``dinov2``, and
its weights); nothing is fetched. The embedding is the class token of the last layer, as DINO's own
``dino_vits16`` returns it; images are preprocessed as MagicBrush does: the short side resized to
256 (bicubic), centre-cropped to 224, normalised with ImageNet's mean and std.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..clip_filter import WEIGHT_FILES, clip_pixel_values, config_model_type
from ..devices import resolve_device, resolve_dtype
from ..errors import IP2PError

DINO_MODEL_TYPES = ("vit", "dinov2")
RESIZE, CROP = 256, 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_NEEDS = (
    "A DINO folder is a transformers ViT or Dinov2 model: config.json (model_type 'vit' or 'dinov2') and "
    "model.safetensors (e.g. facebook/dino-vits16 or facebook/dinov2-small, saved with save_pretrained)."
)


def check_dino_folder(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it holds a ViT/Dinov2 model, else an error naming what is missing or wrong."""
    folder = Path(path)
    if not folder.is_dir():
        raise IP2PError(f"DINO model folder not found: {folder}. {_NEEDS}")
    if not (folder / "config.json").is_file() or not any((folder / n).is_file() for n in WEIGHT_FILES):
        raise IP2PError(f"{folder} lacks config.json or its weights. {_NEEDS}")
    model_type = config_model_type(folder, _NEEDS)
    if model_type not in DINO_MODEL_TYPES:
        raise IP2PError(f"{folder} holds a {model_type!r} model, not a DINO vision transformer. {_NEEDS}")
    return folder


class DinoScorer:
    """Embeds B×3×H×W images in [0, 1] as DINO class tokens (B×D, float32)."""

    def __init__(self, model) -> None:
        self.model = model.eval()

    @classmethod
    def from_folder(
        cls, path: str | os.PathLike, *, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
    ) -> DinoScorer:
        folder = check_dino_folder(path)
        device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
        import transformers

        model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
        return cls(model.to(device=device, dtype=dtype))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        pixels = clip_pixel_values(
            images, shortest_edge=RESIZE, crop=(CROP, CROP), mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
        parameter = next(self.model.parameters())
        output = self.model(pixel_values=pixels.to(device=parameter.device, dtype=parameter.dtype))
        return output.last_hidden_state[:, 0].float()

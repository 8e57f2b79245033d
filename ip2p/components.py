"""A loaded model as the headless backend uses it: diffusers modules plus what we know of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .model_family import ModelFamily


@dataclass
class EditModel:
    """The parts of a Stable Diffusion (InstructPix2Pix) model, in diffusers classes.

    ``scheduler_config`` is the model's own noise schedule (from its ``scheduler/`` folder, or
    the SD 1.5 defaults for a single file); samplers are built from it per run.
    """

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    text_encoder: Any  # transformers.CLIPTextModel
    tokenizer: Any  # transformers.CLIPTokenizer
    scheduler_config: dict
    family: ModelFamily
    model_hash: str  # sha256 of the weights, first 12 hex digits
    source: str = ""  # the path it came from, for messages and metadata
    extra: dict = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

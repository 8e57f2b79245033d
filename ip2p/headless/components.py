"""A loaded model as the headless backend uses it: diffusers modules plus what we know of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..model_family import ModelFamily

# transformers 4.x keeps CLIPTextModel's weights under "text_model."; 5.x dropped the wrapper.
TEXT_MODEL = "text_model."


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


def text_to_module_layout(state: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Canonical ``text_model.*`` keys -> the keys this transformers version's CLIPTextModel uses
    (transformers 5 dropped the ``text_model`` wrapper; 4.x has it)."""
    if any(k.startswith(TEXT_MODEL) for k in module.state_dict()):
        return state
    return {k.removeprefix(TEXT_MODEL): v for k, v in state.items()}


def canonical_text_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CLIPTextModel's weights under the classic ``text_model.*`` keys, whatever the transformers version."""
    return {(k if k.startswith(TEXT_MODEL) else TEXT_MODEL + k): v for k, v in module.state_dict().items()}

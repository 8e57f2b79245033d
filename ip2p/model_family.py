"""Which InstructPix2Pix variant a UNet is, and the conventions that follow from it.

Each family records how the input image enters the UNet: SD 1.5 and the diffusers SDXL
InstructPix2Pix take ``vae.encode(x).mode()`` unscaled; CosXL-Edit (EDM, v-prediction) takes it
multiplied by the VAE scaling factor. New variants slot in as one more :class:`ModelFamily`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import IP2PError

EDIT_IN_CHANNELS = 8  # noisy latent (4) + input-image latent (4)
NATIVE_SIDE = {"sd15": 512, "sdxl": 1024}  # the long side each architecture was trained at


@dataclass(frozen=True)
class ModelFamily:
    name: str
    base: str  # "sd15" or "sdxl": the architecture the UNet belongs to
    in_channels: int
    image_latent_scaled: bool  # multiply the input-image latent by the VAE scaling factor?
    prediction: str  # "epsilon", "v_prediction" or "edm_v_prediction"
    default_text_cfg: float
    default_image_cfg: float

    @property
    def max_side(self) -> int:
        """The longest working side a default edit may use: twice the architecture's native size (SD 1.5: 512,
        SDXL: 1024). A model's config may claim any ``sample_size``; past this it is not believed."""
        return 2 * NATIVE_SIDE[self.base]

    @property
    def is_edit_model(self) -> bool:
        return self.in_channels == EDIT_IN_CHANNELS

    def image_latent(self, mode_latent, scaling_factor: float):
        """The tensor concatenated to the noisy latent, from the VAE posterior's mode."""
        return mode_latent * scaling_factor if self.image_latent_scaled else mode_latent


SD15_IP2P = ModelFamily("sd15_instructpix2pix", "sd15", 8, False, "epsilon", 7.5, 1.5)
SDXL_IP2P = ModelFamily("sdxl_instructpix2pix", "sdxl", 8, False, "epsilon", 7.5, 1.5)
COSXL_EDIT = ModelFamily("cosxl_edit", "sdxl", 8, True, "edm_v_prediction", 5.0, 1.5)
SD15_BASE = ModelFamily("sd15", "sd15", 4, False, "epsilon", 7.5, 1.0)
SDXL_BASE = ModelFamily("sdxl", "sdxl", 4, False, "epsilon", 7.5, 1.0)

FAMILIES = (SD15_IP2P, SDXL_IP2P, COSXL_EDIT, SD15_BASE, SDXL_BASE)


def classify(base: str, in_channels: int, edm_v_prediction: bool = False) -> ModelFamily:
    """The family of a UNet from facts readable off its weights."""
    for family in FAMILIES:
        if (
            family.base == base
            and family.in_channels == in_channels
            and (family is COSXL_EDIT) == (edm_v_prediction and in_channels == 8)
        ):
            return family
    raise IP2PError(
        f"Unsupported UNet: {base} architecture with {in_channels} input channels. "
        f"Supported: SD 1.5 or SDXL with 8 input channels (InstructPix2Pix) or 4 (base models)."
    )


def require_edit_model(family: ModelFamily, source: str) -> None:
    """Refuse a base model for editing: wired for editing it produces unrelated images."""
    if not family.is_edit_model:
        raise IP2PError(
            f"{source} is not an InstructPix2Pix model: its UNet takes {family.in_channels} input "
            f"channels, an InstructPix2Pix UNet takes {EDIT_IN_CHANNELS} (noisy latent + input-image "
            f"latent). Load an InstructPix2Pix checkpoint (e.g. timbrooks/instruct-pix2pix, "
            f"'instruct-pix2pix-00-22000.safetensors') or train one with this toolkit; a base "
            f"{family.base.upper()} model is only a starting point for training and data generation."
        )

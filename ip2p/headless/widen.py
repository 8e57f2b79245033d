"""conv_in widened from 4 to 8 input channels: a base SD model made the starting point of an InstructPix2Pix one.

The 4 pretrained input channels (the noisy latent) keep their weights, the 4 new ones (the input
image's latent) start at zero and the bias is kept, so the widened UNet computes exactly what the
base UNet computed whatever the image latent holds, until training moves the new weights.
"""

from __future__ import annotations

import torch

from ..errors import IP2PError
from ..model_family import EDIT_IN_CHANNELS, classify
from .components import EditModel


def widen_conv_in(unet: torch.nn.Module, in_channels: int = EDIT_IN_CHANNELS) -> torch.nn.Module:
    """Widen a diffusers UNet's ``conv_in`` in place to ``in_channels`` (new channels zero); returns the UNet.

    The UNet's config records the new ``in_channels``. A UNet already that wide is returned unchanged.
    """
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise IP2PError(
            f"The UNet already takes {old.in_channels} input channels; it cannot be widened to {in_channels}."
        )
    new = torch.nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def widen_model(model: EditModel) -> EditModel:
    """A base (4-channel) model turned into an untrained InstructPix2Pix model (in place; returned)."""
    widen_conv_in(model.unet, EDIT_IN_CHANNELS)
    model.family = classify(model.family.base, EDIT_IN_CHANNELS)
    return model

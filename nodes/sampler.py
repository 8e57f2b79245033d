"""The one-node edit: image + instruction in, edited image out, with dual guidance."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import torch

from ..ip2p import sizing
from ..ip2p.errors import IP2PError
from ..ip2p.guidance import Guidance
from . import host
from .conditioning import attach_image, image_latent, resolve_conditioning
from .guider import make_guider
from .inputs import (
    CATEGORY,
    GUIDANCE_INPUTS,
    MODEL_IMAGE_INPUTS,
    OPTIONAL_COND_INPUTS,
    RESIZE_INPUTS,
    SAMPLING_INPUTS,
    TEXT_INPUTS,
    sampler_inputs,
)


def image_to_size(pixels: torch.Tensor, size: tuple[int, int], resize: str) -> torch.Tensor:
    """Edited BHWC pixels at the size the policy returns (the input's own size for "keep")."""
    return sizing.restore(pixels.movedim(-1, 1), size, resize).movedim(1, -1).contiguous()


@torch.no_grad()
def sample_edit(
    model, latent, positive, negative, guidance: Guidance, *, seed, steps, sampler_name, scheduler, denoise
):
    """Sample the edit of the input whose (unscaled, mode) latent is ``latent``; returns the raw latent."""
    if steps < 1:
        raise IP2PError(f"steps is {steps}; give at least 1 (the paper uses 100).")
    positive, negative = attach_image(positive, negative, latent)
    guider = make_guider(model, positive, negative, guidance)
    # At full denoise start from pure noise, as ComfyUI's native graph does; below 1, from the input image.
    start = comfy.sample.fix_empty_latent_channels(model, latent * 0) if denoise >= 1.0 else latent
    noise = comfy.sample.prepare_noise(start, seed)
    ksampler = comfy.samplers.KSampler(
        model, steps=steps, device=model.load_device, sampler=sampler_name, scheduler=scheduler,
        denoise=denoise, model_options=model.model_options,
    )  # fmt: skip
    samples = guider.sample(
        noise,
        start,
        comfy.samplers.sampler_object(sampler_name),
        ksampler.sigmas,
        callback=host.step_callback(model, ksampler.sigmas.shape[-1] - 1),
        disable_pbar=host.progress_disabled(),
        seed=seed,
    )
    return samples.to(comfy.model_management.intermediate_device())


class IP2PKSampler:
    NODE_ID = "IP2PKSampler"
    DISPLAY_NAME = "InstructPix2Pix KSampler"
    DESCRIPTION = (
        "Edits an image from a written instruction with InstructPix2Pix's dual guidance, in one node. "
        "Defaults are the paper's: text_cfg 7.5, image_cfg 1.5, Euler ancestral, 100 steps, long side 512."
    )
    CATEGORY = f"{CATEGORY}/sampling"
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("image", "latent")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **MODEL_IMAGE_INPUTS,
                **TEXT_INPUTS,
                **SAMPLING_INPUTS,
                **GUIDANCE_INPUTS,
                **sampler_inputs(),
                "denoise": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Below 1 starts from the input image instead of pure noise.",
                    },
                ),
                **RESIZE_INPUTS,
            },
            "optional": OPTIONAL_COND_INPUTS,
        }

    @classmethod
    def execute(cls, model, vae, image, instruction, negative, seed, steps, text_cfg, image_cfg, sampler_name,
                scheduler, denoise, resize, max_side, clip=None, positive=None, negative_conditioning=None):  # fmt: skip
        host.require_ip2p_model(model)
        guidance = Guidance(text_cfg, image_cfg)  # checked before anything is encoded
        if not instruction.strip() and positive is None:
            # The paper's tools return the input unchanged for an empty instruction.
            return image, {"samples": image_latent(vae, image, "keep", max_side)}
        original_size = (image.shape[2], image.shape[1])
        latent = image_latent(vae, image, resize, max_side)
        positive, negative_cond = resolve_conditioning(clip, instruction, negative, positive, negative_conditioning)
        samples = sample_edit(
            model, latent, positive, negative_cond, guidance, seed=seed, steps=steps, sampler_name=sampler_name,
            scheduler=scheduler, denoise=denoise,
        )  # fmt: skip
        with torch.no_grad():
            edited = vae.decode(samples)
        return image_to_size(edited, original_size, resize), {"samples": samples}

"""The one-node edit: image + instruction in, edited image out, with dual guidance."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import torch

from ..ip2p import guidance
from ..ip2p.errors import IP2PError
from . import host
from .common import CATEGORY, RESIZE_INPUTS, cfg_input, image_to_size, image_to_working_size
from .guider import attach_image, make_guider


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


@torch.no_grad()
def sample_edit(
    model, image_latent, positive, negative, *, seed, steps, text_cfg, image_cfg, sampler_name, scheduler, denoise
):
    """Sample the edit of the input whose (unscaled, mode) latent is ``image_latent``; returns the raw latent."""
    guidance.Guidance(text_cfg, image_cfg)  # checked before anything is encoded
    if steps < 1:
        raise IP2PError(f"steps is {steps}; give at least 1 (the paper uses 100).")
    positive, negative = attach_image(positive, negative, image_latent)
    guider = make_guider(model, positive, negative, text_cfg, image_cfg)
    # At full denoise start from pure noise, as ComfyUI's native graph does; below 1, from the input image.
    start = comfy.sample.fix_empty_latent_channels(model, image_latent * 0) if denoise >= 1.0 else image_latent
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


SAMPLING_INPUTS = {
    "seed": (
        "INT",
        {
            "default": 0,
            "min": 0,
            "max": 0xFFFFFFFFFFFFFFFF,
            "control_after_generate": True,
            "tooltip": "Noise seed (ComfyUI's convention).",
        },
    ),
    "steps": ("INT", {"default": 100, "min": 1, "max": 10000, "tooltip": "Sampling steps (the paper: 100)."}),
}


def sampler_inputs() -> dict:
    return {
        "sampler_name": (
            comfy.samplers.KSampler.SAMPLERS,
            {"default": "euler_ancestral", "tooltip": "Sampler (the paper: Euler ancestral)."},
        ),
        "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal", "tooltip": "Noise schedule."}),
    }


MODEL_IMAGE_INPUTS = {
    "model": ("MODEL", {"tooltip": "An InstructPix2Pix model (8-channel UNet)."}),
    "vae": ("VAE", {"tooltip": "The model's VAE."}),
    "image": ("IMAGE", {"tooltip": "The image(s) to edit."}),
}

TEXT_INPUTS = {
    "instruction": (
        "STRING",
        {
            "multiline": True,
            "default": "",
            "tooltip": "What to change, e.g. 'turn the sky into a sunset'. Empty returns the image unchanged.",
        },
    ),
    "negative": (
        "STRING",
        {"multiline": True, "default": "", "tooltip": "Negative prompt; empty is the paper's setting."},
    ),
}

OPTIONAL_COND_INPUTS = {
    "clip": (
        "CLIP",
        {"tooltip": "Encodes the instruction and negative (not needed when both CONDITIONING inputs are connected)."},
    ),
    "positive": ("CONDITIONING", {"tooltip": "Use this instead of encoding the instruction."}),
    "negative_conditioning": ("CONDITIONING", {"tooltip": "Use this instead of encoding the negative text."}),
}


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
                "text_cfg": cfg_input(guidance.DEFAULT_TEXT_CFG, "How strongly to follow the instruction (s_T)."),
                "image_cfg": cfg_input(guidance.DEFAULT_IMAGE_CFG, "How closely to keep to the input image (s_I)."),
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
        original_size = (image.shape[2], image.shape[1])
        if not instruction.strip() and positive is None:
            # The paper's tools return the input unchanged for an empty instruction.
            return image, {"samples": host.encode_mode(vae, image_to_working_size(image, "keep", max_side))}
        pixels = image_to_working_size(image, resize, max_side)
        positive, negative_cond = resolve_conditioning(clip, instruction, negative, positive, negative_conditioning)
        with torch.no_grad():
            image_latent = host.encode_mode(vae, pixels)
        samples = sample_edit(
            model, image_latent, positive, negative_cond, seed=seed, steps=steps, text_cfg=text_cfg,
            image_cfg=image_cfg, sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
        )  # fmt: skip
        with torch.no_grad():
            edited = vae.decode(samples)
        return image_to_size(edited, original_size, resize), {"samples": samples}

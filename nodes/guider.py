"""Dual guidance as a ComfyUI GUIDER, and the conditioning that attaches the input image.

The guider runs the branches that its :class:`ip2p.guidance.Guidance` needs in one
``calc_cond_batch`` call and combines them with that value, as the headless backend does. ComfyUI's guiders see denoised predictions rather than noise; the
formula's weights sum to one, so combining either gives the same step.
"""

from __future__ import annotations

import comfy.samplers
import torch

from ..ip2p import guidance
from ..ip2p.errors import IP2PError
from ..ip2p.guidance import Branch
from . import host
from .common import CATEGORY, RESIZE_INPUTS, cfg_input, image_to_working_size

CONCAT_KEY = "concat_latent_image"  # where ComfyUI's IP2P models read the input-image latent


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


class DualCFGGuider(comfy.samplers.CFGGuider):
    """CFGGuider with InstructPix2Pix's text and image guidance scales."""

    def set_conds(self, positive, negative):
        # "positive": (c_I, c_T); "negative": (c_I, ∅); "uncond": (∅, ∅)
        self.inner_set_conds(
            {
                "positive": positive,
                "negative": with_values(negative, prompt_type="negative"),
                "uncond": with_values(without_image(negative), prompt_type="negative"),
            }
        )

    def set_cfg(self, text_cfg: float, image_cfg: float):
        self.guidance = guidance.Guidance(text_cfg, image_cfg)
        self.cfg = self.guidance.text_cfg  # read by hooks that look at guider.cfg

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI's signature)
        cond_keys = {Branch.FULL: "positive", Branch.IMAGE: "negative", Branch.UNCOND: "uncond"}
        needed = self.guidance.branches
        conds = [self.conds.get(cond_keys[b]) if b in needed else None for b in guidance.BRANCH_ORDER]
        out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn(
                {
                    "conds": conds,
                    "conds_out": out,
                    "cond_scale": self.guidance.text_cfg,
                    "timestep": timestep,
                    "input": x,
                    "sigma": timestep,
                    "model": self.inner_model,
                    "model_options": model_options,
                }
            )
        predictions = dict(zip(guidance.BRANCH_ORDER, out, strict=True))
        result = self.guidance.combine(predictions)
        # Keep the user's post-CFG hooks (RescaleCFG, ...), as ComfyUI's own cfg_function would.
        weakest = self.guidance.weakest
        for fn in model_options.get("sampler_post_cfg_function", []):
            result = fn(
                {
                    "denoised": result,
                    "cond": conds[0],
                    "uncond": conds[guidance.BRANCH_ORDER.index(weakest)],
                    "model": self.inner_model,
                    "uncond_denoised": predictions[weakest],
                    "cond_denoised": predictions[Branch.FULL],
                    "sigma": timestep,
                    "model_options": model_options,
                    "input": x,
                }
            )
        return result


def make_guider(model, positive, negative, text_cfg: float, image_cfg: float) -> DualCFGGuider:
    host.require_custom_guiders()
    host.require_ip2p_model(model)
    guider = DualCFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(text_cfg, image_cfg)
    return guider


def attach_image(positive, negative, image_latent: torch.Tensor) -> tuple[list, list]:
    """Both conditionings carrying the (unscaled) input-image latent; the model applies its convention."""
    check_batches(positive, image_latent.shape[0], "positive")
    check_batches(negative, image_latent.shape[0], "negative")
    return with_values(positive, **{CONCAT_KEY: image_latent}), with_values(negative, **{CONCAT_KEY: image_latent})


class IP2PDualCFGGuider:
    NODE_ID = "IP2PDualCFGGuider"
    DISPLAY_NAME = "InstructPix2Pix Dual CFG Guider"
    DESCRIPTION = (
        "Guider for SamplerCustomAdvanced with InstructPix2Pix's two scales: "
        "e = e(∅,∅) + text_cfg·(e(img,text) − e(img,∅)) + image_cfg·(e(img,∅) − e(∅,∅)), one batched model call."
    )
    CATEGORY = f"{CATEGORY}/sampling"
    FUNCTION = "execute"
    RETURN_TYPES = ("GUIDER",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An InstructPix2Pix model (8-channel UNet)."}),
                "positive": ("CONDITIONING", {"tooltip": "The instruction, from 'InstructPix2Pix Conditioning'."}),
                "negative": (
                    "CONDITIONING",
                    {"tooltip": "The empty or negative prompt, from 'InstructPix2Pix Conditioning'."},
                ),
                "text_cfg": cfg_input(guidance.DEFAULT_TEXT_CFG, "How strongly to follow the instruction (s_T)."),
                "image_cfg": cfg_input(guidance.DEFAULT_IMAGE_CFG, "How closely to keep to the input image (s_I)."),
            }
        }

    @classmethod
    def execute(cls, model, positive, negative, text_cfg, image_cfg):
        return (make_guider(model, positive, negative, text_cfg, image_cfg),)


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
        pixels = image_to_working_size(pixels, resize, max_side)
        with torch.no_grad():
            image_latent = host.encode_mode(vae, pixels)
        positive, negative = attach_image(positive, negative, image_latent)
        return positive, negative, {"samples": torch.zeros_like(image_latent)}

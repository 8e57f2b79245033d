"""InstructPix2Pix's dual guidance as a ComfyUI GUIDER, and the node that makes one.

:class:`InstructPix2PixGuider` runs the branches its :class:`ip2p.guidance.Guidance` needs in one
``calc_cond_batch`` call and combines them with that value, as the headless backend does. ComfyUI's
guiders see denoised predictions rather than noise; the formula's weights sum to one, so combining
either gives the same step.

The user's model patches are kept, as ComfyUI's own guiders keep them:

- ``sampler_pre_cfg_function`` hooks see every branch's prediction (``None`` conds for branches not run);
- ``sampler_cfg_function`` (RescaleCFG, PerpNeg, ...) replaces the *text* step
  e(img,∅) + text_cfg·(e(img,text) − e(img,∅)), called with ComfyUI's ``cfg_function`` arguments
  (cond = the full branch, uncond = the image-only branch, cond_scale = text_cfg); the image term
  (image_cfg − 1)·(e(img,∅) − e(∅,∅)) is then added unchanged. ComfyUI's ``Guider_DualCFG``
  applies the function to one step and adds the other's term the same way; we give it the text
  step because that carries the large scale such patches are made for, and because with
  image_cfg = 1 it still needs only two branches;
- ``sampler_post_cfg_function`` hooks (SAG, PAG, ...) see the final guided prediction, with the same
  cond/uncond pair.
"""

from __future__ import annotations

import comfy.samplers

from ..ip2p.guidance import BRANCH_ORDER, Branch, Guidance
from . import host
from .conditioning import with_values, without_image
from .inputs import CATEGORY, GUIDANCE_INPUTS

COND_KEYS = {Branch.FULL: "positive", Branch.IMAGE: "negative", Branch.UNCOND: "uncond"}


class InstructPix2PixGuider(comfy.samplers.CFGGuider):
    """A CFGGuider with InstructPix2Pix's text and image guidance scales (one :class:`Guidance`)."""

    def set_conds(self, positive, negative):
        # "positive": (c_I, c_T); "negative": (c_I, ∅); "uncond": (∅, ∅)
        self.inner_set_conds(
            {
                "positive": positive,
                "negative": with_values(negative, prompt_type="negative"),
                "uncond": with_values(without_image(negative), prompt_type="negative"),
            }
        )

    def set_guidance(self, guidance: Guidance) -> None:
        self.guidance = guidance
        self.text_step = Guidance(guidance.text_cfg, 1.0)  # the guidance without its image term
        self.cfg = guidance.text_cfg  # read by hooks that look at guider.cfg

    def branches(self, model_options: dict) -> tuple[Branch, ...]:
        """The branches to run: the guidance's, plus the image-only one when a hook reads the text step."""
        needed = set(self.guidance.branches)
        if "sampler_cfg_function" in model_options or model_options.get("sampler_post_cfg_function"):
            needed.add(Branch.IMAGE)
        return tuple(b for b in BRANCH_ORDER if b in needed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI's signature)
        branches = self.branches(model_options)
        conds = [self.conds.get(COND_KEYS[b]) if b in branches else None for b in BRANCH_ORDER]
        out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        text_cfg = self.guidance.text_cfg
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn(
                {
                    "conds": conds,
                    "conds_out": out,
                    "cond_scale": text_cfg,
                    "timestep": timestep,
                    "input": x,
                    "sigma": timestep,
                    "model": self.inner_model,
                    "model_options": model_options,
                }
            )
        predictions = {b: out[i] for i, b in enumerate(BRANCH_ORDER) if b in branches}
        result = self.guidance.combine(predictions)
        cond, uncond = conds[0], conds[1]
        cond_pred, uncond_pred = predictions[Branch.FULL], predictions.get(Branch.IMAGE)
        cfg_function = model_options.get("sampler_cfg_function")
        if cfg_function is not None:
            image_term = result - self.text_step.combine(predictions)
            text_step = x - cfg_function(
                {
                    "cond": x - cond_pred,
                    "uncond": x - uncond_pred,
                    "cond_scale": text_cfg,
                    "timestep": timestep,
                    "input": x,
                    "sigma": timestep,
                    "cond_denoised": cond_pred,
                    "uncond_denoised": uncond_pred,
                    "model": self.inner_model,
                    "model_options": model_options,
                    "input_cond": cond,
                    "input_uncond": uncond,
                }
            )
            result = text_step + image_term
        for fn in model_options.get("sampler_post_cfg_function", []):
            result = fn(
                {
                    "denoised": result,
                    "cond": cond,
                    "uncond": uncond,
                    "cond_scale": text_cfg,
                    "model": self.inner_model,
                    "uncond_denoised": uncond_pred,
                    "cond_denoised": cond_pred,
                    "sigma": timestep,
                    "model_options": model_options,
                    "input": x,
                }
            )
        return result


def make_guider(model, positive: list, negative: list, guidance: Guidance) -> InstructPix2PixGuider:
    host.require_custom_guiders()
    host.require_ip2p_model(model)
    guider = InstructPix2PixGuider(model)
    guider.set_conds(positive, negative)
    guider.set_guidance(guidance)
    return guider


class IP2PDualCFGGuider:
    NODE_ID = "IP2PDualCFGGuider"
    DISPLAY_NAME = "InstructPix2Pix Dual CFG Guider"
    DESCRIPTION = (
        "Guider for SamplerCustomAdvanced with InstructPix2Pix's two scales: "
        "e = e(∅,∅) + text_cfg·(e(img,text) − e(img,∅)) + image_cfg·(e(img,∅) − e(∅,∅)), one batched model call. "
        "Model patches that replace CFG (e.g. RescaleCFG) apply to the text_cfg step."
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
                **GUIDANCE_INPUTS,
            }
        }

    @classmethod
    def execute(cls, model, positive, negative, text_cfg, image_cfg):
        return (make_guider(model, positive, negative, Guidance(text_cfg, image_cfg)),)

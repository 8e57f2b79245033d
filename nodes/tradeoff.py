"""The paper's trade-off plot as a node: how an edit model trades following the instruction for
keeping the input, over a sweep of image_cfg (one line per text_cfg)."""

from __future__ import annotations

import numpy as np
import torch

from ..ip2p import plot
from ..ip2p.guidance import Guidance
from . import host
from .clip import SCORER, typed_pairs
from .conditioning import image_latent, image_to_working_size, resolve_conditioning
from .inputs import CATEGORY, MODEL_IMAGE_INPUTS, OPTIONAL_COND_INPUTS, RESIZE_INPUTS, SAMPLING_INPUTS, sampler_inputs
from .sweep import edit_each, sweep_cells

# What a CLIP-scored sweep needs besides the model and the image (the trade-off and auto guidance nodes).
SCORED_SWEEP_INPUTS = {
    "clip_scorer": (SCORER, {"tooltip": "From 'InstructPix2Pix CLIP Scorer Loader'."}),
    "instruction": ("STRING", {"multiline": True, "default": "", "tooltip": "The edit to make."}),
    "input_caption": ("STRING", {"default": "", "tooltip": "What the input image shows."}),
    "edited_caption": ("STRING", {"default": "", "tooltip": "What the edited image should show."}),
}


class IP2PTradeoffPlot:
    NODE_ID = "IP2PTradeoffPlot"
    DISPLAY_NAME = "InstructPix2Pix Trade-off Plot"
    DESCRIPTION = (
        "Edits the image(s) at every image_cfg of the sweep (and every text_cfg), scores each edit with CLIP and "
        "plots the paper's trade-off: directional similarity (follows the instruction) against image similarity "
        "(keeps the input), one line per text_cfg, each point labelled with its image_cfg."
    )
    CATEGORY = f"{CATEGORY}/dataset"
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("plot", "edits", "points")
    OUTPUT_TOOLTIPS = (
        "The plot.",
        "Every edit, text_cfg by text_cfg, image_cfg by image_cfg, image by image.",
        "The plotted values, one line per point.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **MODEL_IMAGE_INPUTS,
                **SCORED_SWEEP_INPUTS,
                **SAMPLING_INPUTS,
                "text_cfg_values": ("STRING", {"default": "7.5", "tooltip": "One line per text_cfg (comma-separated)."}),
                "image_cfg_values": (
                    "STRING",
                    {"default": "1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2", "tooltip": "The image_cfg sweep."},
                ),
                **sampler_inputs(),
                **RESIZE_INPUTS,
            },
            "optional": OPTIONAL_COND_INPUTS,
        }  # fmt: skip

    @classmethod
    def execute(cls, model, vae, image, clip_scorer, instruction, input_caption, edited_caption, seed, steps,
                text_cfg_values, image_cfg_values, sampler_name, scheduler, resize, max_side, clip=None, positive=None,
                negative_conditioning=None):  # fmt: skip
        _, _, cells = sweep_cells(text_cfg_values, image_cfg_values)
        points, edits = scored_sweep(
            model, vae, image, clip_scorer, instruction, input_caption, edited_caption, cells, seed=seed, steps=steps,
            sampler_name=sampler_name, scheduler=scheduler, resize=resize, max_side=max_side, clip=clip,
            positive=positive, negative_conditioning=negative_conditioning,
        )  # fmt: skip
        figure = plot.tradeoff_plot(points, title=f"{instruction.strip()} ({image.shape[0]} image(s), seed {seed})")
        pixels = torch.from_numpy(np.asarray(figure, dtype=np.float32) / 255.0).unsqueeze(0)
        lines = [
            f"text_cfg {p.text_cfg:g}, image_cfg {p.image_cfg:g}: directional {p.directional:.4f}, "
            f"image {p.image_similarity:.4f}"
            for p in points
        ]
        return pixels, torch.cat(edits), "\n".join(lines)


def scored_sweep(model, vae, image, clip_scorer, instruction, input_caption, edited_caption, cells: list[Guidance], *,
                 seed, steps, sampler_name, scheduler, resize, max_side, clip, positive, negative_conditioning):  # fmt: skip
    """One TradeoffPoint and one BHWC edit batch per cell, in order: the batch edited at the cell's scales, each
    edit scored against its input (at the working size) with CLIP, the point holding the means over the batch."""
    host.require_ip2p_model(model)
    typed_pairs(1, input_caption, instruction, edited_caption)  # the captions, checked as the filter checks them
    working = image_to_working_size(image, resize, max_side)[..., :3]
    latent = image_latent(vae, image, resize, max_side)
    positive, negative_cond = resolve_conditioning(clip, instruction, "", positive, negative_conditioning)
    captions0, captions1 = [input_caption] * image.shape[0], [edited_caption] * image.shape[0]
    points, edits = [], []
    for guidance, edited in edit_each(
        model, vae, latent, positive, negative_cond, cells, seed=seed, steps=steps, sampler_name=sampler_name,
        scheduler=scheduler,
    ):  # fmt: skip
        scores = clip_scorer.score(working, edited, captions0, captions1)
        point = plot.TradeoffPoint(
            image_cfg=guidance.image_cfg,
            text_cfg=guidance.text_cfg,
            directional=float(scores.sim_dir.mean()),
            image_similarity=float(scores.sim_image.mean()),
        )
        points.append(point)
        edits.append(edited)
    return points, edits

"""A labelled grid of edits over text_cfg × image_cfg, to choose the scales by eye."""

from __future__ import annotations

import torch

from ..ip2p import grid
from ..ip2p.guidance import Guidance
from . import host
from .conditioning import image_latent, resolve_conditioning
from .inputs import (
    CATEGORY,
    MODEL_IMAGE_INPUTS,
    OPTIONAL_COND_INPUTS,
    RESIZE_INPUTS,
    SAMPLING_INPUTS,
    TEXT_INPUTS,
    sampler_inputs,
)
from .sampler import sample_edit


class IP2PGuidanceSweep:
    NODE_ID = "IP2PGuidanceSweep"
    DISPLAY_NAME = "InstructPix2Pix Guidance Sweep"
    DESCRIPTION = (
        "Edits the image once per (text_cfg, image_cfg) pair with the same seed and lays the results out as a "
        "labelled grid, one grid per input image: rows are text_cfg values, columns image_cfg values."
    )
    CATEGORY = f"{CATEGORY}/sampling"
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("grid", "edits")
    OUTPUT_TOOLTIPS = ("One labelled grid per input image.", "Every edit, in grid order, image by image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **MODEL_IMAGE_INPUTS,
                **TEXT_INPUTS,
                **SAMPLING_INPUTS,
                "text_cfg_values": (
                    "STRING",
                    {"default": "5, 7.5, 10", "tooltip": "text_cfg values (rows), comma-separated."},
                ),
                "image_cfg_values": (
                    "STRING",
                    {"default": "1.0, 1.5, 2.0", "tooltip": "image_cfg values (columns), comma-separated."},
                ),
                **sampler_inputs(),
                **RESIZE_INPUTS,
            },
            "optional": OPTIONAL_COND_INPUTS,
        }

    @classmethod
    def execute(cls, model, vae, image, instruction, negative, seed, steps, text_cfg_values, image_cfg_values,
                sampler_name, scheduler, resize, max_side, clip=None, positive=None, negative_conditioning=None):  # fmt: skip
        host.require_ip2p_model(model)
        text_values = grid.parse_scales(text_cfg_values, "text_cfg_values")
        image_values = grid.parse_scales(image_cfg_values, "image_cfg_values")
        # Every cell's scales are checked before the first edit starts.
        cells = [Guidance(text_cfg, image_cfg) for text_cfg in text_values for image_cfg in image_values]
        latent = image_latent(vae, image, resize, max_side)  # once for every cell
        positive, negative_cond = resolve_conditioning(clip, instruction, negative, positive, negative_conditioning)
        bar = host.progress_bar(len(cells))
        edits = []  # [cell][batch] → BHWC
        for guidance in cells:
            host.throw_if_interrupted()
            samples = sample_edit(
                model, latent, positive, negative_cond, guidance, seed=seed, steps=steps, sampler_name=sampler_name,
                scheduler=scheduler, denoise=1.0,
            )  # fmt: skip
            with torch.no_grad():
                edits.append(vae.decode(samples)[..., :3])
            bar.update(1)
        per_image = torch.stack(edits, dim=1)  # (batch, cells, H, W, C)
        rows = [f"text_cfg {v:g}" for v in text_values]
        cols = [f"image_cfg {v:g}" for v in image_values]
        grids = torch.stack([grid.labelled_grid(cells_of_one, rows, cols) for cells_of_one in per_image])
        return grids, per_image.flatten(0, 1)

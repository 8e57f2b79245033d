"""A labelled grid of edits over text_cfg × image_cfg, to choose the scales by eye."""

from __future__ import annotations

import torch

from ..ip2p import grid
from . import host
from .common import CATEGORY, RESIZE_INPUTS, image_to_working_size
from .sampler import (
    MODEL_IMAGE_INPUTS,
    OPTIONAL_COND_INPUTS,
    SAMPLING_INPUTS,
    TEXT_INPUTS,
    resolve_conditioning,
    sample_edit,
    sampler_inputs,
)


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
        pixels = image_to_working_size(image, resize, max_side)
        with torch.no_grad():
            image_latent = host.encode_mode(vae, pixels)  # once for every cell
        positive, negative_cond = resolve_conditioning(clip, instruction, negative, positive, negative_conditioning)
        bar = host.progress_bar(len(text_values) * len(image_values))
        edits = []  # [cell][batch] → BHWC
        for text_cfg in text_values:
            for image_cfg in image_values:
                host.throw_if_interrupted()
                samples = sample_edit(
                    model, image_latent, positive, negative_cond, seed=seed, steps=steps, text_cfg=text_cfg,
                    image_cfg=image_cfg, sampler_name=sampler_name, scheduler=scheduler, denoise=1.0,
                )  # fmt: skip
                with torch.no_grad():
                    edits.append(vae.decode(samples)[..., :3])
                bar.update(1)
        cells = torch.stack(edits, dim=1)  # (batch, cells, H, W, C)
        rows = [f"text_cfg {v:g}" for v in text_values]
        cols = [f"image_cfg {v:g}" for v in image_values]
        grids = torch.stack([grid.labelled_grid(per_image, rows, cols) for per_image in cells])
        return grids, cells.flatten(0, 1)

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


def sweep_cells(text_cfg_values: str, image_cfg_values: str) -> tuple[list[float], list[float], list[Guidance]]:
    """The two value lists and one Guidance per (text_cfg, image_cfg), row-major; every cell is checked
    before the first edit starts."""
    text_values = grid.parse_scales(text_cfg_values, "text_cfg_values")
    image_values = grid.parse_scales(image_cfg_values, "image_cfg_values")
    return text_values, image_values, [Guidance(t, i) for t in text_values for i in image_values]


def edit_each(model, vae, latent, positive, negative, cells: list[Guidance], *, seed, steps, sampler_name, scheduler):
    """(guidance, BHWC edit) for each cell in turn, same seed, with progress and interruption between cells."""
    bar = host.progress_bar(len(cells))
    for guidance in cells:
        host.throw_if_interrupted()
        samples = sample_edit(
            model, latent, positive, negative, guidance, seed=seed, steps=steps, sampler_name=sampler_name,
            scheduler=scheduler, denoise=1.0,
        )  # fmt: skip
        with torch.no_grad():
            edited = vae.decode(samples)[..., :3]
        yield guidance, edited
        bar.update(1)


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
        text_values, image_values, cells = sweep_cells(text_cfg_values, image_cfg_values)
        latent = image_latent(vae, image, resize, max_side)  # once for every cell
        positive, negative_cond = resolve_conditioning(clip, instruction, negative, positive, negative_conditioning)
        edits = [  # [cell][batch] → BHWC
            edited
            for _, edited in edit_each(
                model, vae, latent, positive, negative_cond, cells, seed=seed, steps=steps, sampler_name=sampler_name,
                scheduler=scheduler,
            )
        ]  # fmt: skip
        per_image = torch.stack(edits, dim=1)  # (batch, cells, H, W, C)
        rows = [f"text_cfg {v:g}" for v in text_values]
        cols = [f"image_cfg {v:g}" for v in image_values]
        grids = torch.stack([grid.labelled_grid(cells_of_one, rows, cols) for cells_of_one in per_image])
        return grids, per_image.flatten(0, 1)

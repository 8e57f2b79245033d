"""Automatic guidance as a node: a small (text_cfg, image_cfg) sweep scored with CLIP, one setting kept by the
core's rule (ip2p/quality/auto_cfg.py), its edit and scales returned for the rest of the graph."""

from __future__ import annotations

from ..ip2p.quality import auto_cfg
from .inputs import CATEGORY, MODEL_IMAGE_INPUTS, OPTIONAL_COND_INPUTS, RESIZE_INPUTS, SAMPLING_INPUTS, sampler_inputs
from .sweep import sweep_cells
from .tradeoff import SCORED_SWEEP_INPUTS, scored_sweep


def _values(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:g}" for v in values)


class IP2PAutoGuidance:
    NODE_ID = "IP2PAutoGuidance"
    DISPLAY_NAME = "InstructPix2Pix Auto Guidance"
    DESCRIPTION = (
        "Edits the image(s) at every (text_cfg, image_cfg) of a small sweep with the same seed, scores each edit with "
        "CLIP, and keeps the setting with the highest directional similarity (follows the instruction) among those "
        "whose image similarity (keeps the input) reaches min_image_similarity; if none does, the one keeping the "
        "most of the input. One choice per batch, by the means over its images. Returns that edit, its two scales "
        "(to wire into a sampler) and the sweep's scores."
    )
    CATEGORY = f"{CATEGORY}/sampling"
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("edit", "text_cfg", "image_cfg", "scores")
    OUTPUT_TOOLTIPS = (
        "The edit at the chosen scales.",
        "The chosen text_cfg.",
        "The chosen image_cfg.",
        "Every setting's directional and image similarity, the chosen one marked, and why it was chosen.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **MODEL_IMAGE_INPUTS,
                **SCORED_SWEEP_INPUTS,
                **SAMPLING_INPUTS,
                "text_cfg_values": (
                    "STRING",
                    {"default": _values(auto_cfg.DEFAULT_TEXT_CFG_VALUES), "tooltip": "The sweep's text_cfg values."},
                ),
                "image_cfg_values": (
                    "STRING",
                    {"default": _values(auto_cfg.DEFAULT_IMAGE_CFG_VALUES), "tooltip": "The sweep's image_cfg values."},
                ),
                "min_image_similarity": (
                    "FLOAT",
                    {
                        "default": auto_cfg.DEFAULT_MIN_IMAGE_SIMILARITY,
                        "min": -1.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "The floor of CLIP image similarity (input vs edit); 0.75 is the paper's filter "
                        "threshold.",
                    },
                ),  # fmt: skip
                **sampler_inputs(),
                **RESIZE_INPUTS,
            },
            "optional": OPTIONAL_COND_INPUTS,
        }

    @classmethod
    def execute(cls, model, vae, image, clip_scorer, instruction, input_caption, edited_caption, seed, steps,
                text_cfg_values, image_cfg_values, min_image_similarity, sampler_name, scheduler, resize, max_side,
                clip=None, positive=None, negative_conditioning=None):  # fmt: skip
        auto_cfg.check_floor(min_image_similarity)  # before the first edit
        _, _, cells = sweep_cells(text_cfg_values, image_cfg_values)
        points, edits = scored_sweep(
            model, vae, image, clip_scorer, instruction, input_caption, edited_caption, cells, seed=seed, steps=steps,
            sampler_name=sampler_name, scheduler=scheduler, resize=resize, max_side=max_side, clip=clip,
            positive=positive, negative_conditioning=negative_conditioning,
        )  # fmt: skip
        choice = auto_cfg.choose_guidance(points, min_image_similarity)
        chosen = next(k for k, point in enumerate(points) if point is choice.chosen)
        return edits[chosen], choice.chosen.text_cfg, choice.chosen.image_cfg, choice.table()

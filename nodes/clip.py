"""The data engine's CLIP filter as nodes: a local CLIP dual encoder, and the scorer/filter with a preview.

No standard ComfyUI folder holds both CLIP towers in transformers' format, so the pack registers
its own, ``models/ip2p_clip`` (``CLIP_FOLDER``; extra_model_paths.yaml may add more). The filter
takes any batch of (input image, edited image) pairs: from the pair generator (whose ``pairs``
carry captions and prompts) or from anywhere else in a graph, with the captions typed in.
"""

from __future__ import annotations

import os

import comfy.model_management
import comfy.model_patcher
import torch

from ..ip2p import grid
from ..ip2p.clip_filter import METADATA_KEYS, ClipScorer, FilterThresholds, select_samples
from ..ip2p.errors import IP2PError
from ..ip2p.pairs import GeneratedPair
from ..ip2p.prompts import PromptTriple
from . import host
from .inputs import CATEGORY
from .pairs import PAIRS

CLIP_FOLDER = "ip2p_clip"
MODEL_MARKER = "config.json"  # the file that makes a folder a model folder (CLIP and DINO alike)
SCORER = "IP2P_CLIP"
BY_PATH = "(use path)"
PREVIEW_LABEL_WIDTH = 150


class _Holder(torch.nn.Module):
    """A plain module around the CLIP model: ComfyUI's ModelPatcher sets ``device`` on what it holds,
    which transformers models expose as a read-only property."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.clip = model


class ManagedModel:
    """A core scorer (CLIP, DINO) whose ``model`` ComfyUI's model management loads and unloads like its own models."""

    def __init__(self, scorer, source: str) -> None:
        self.scorer, self.source = scorer, source
        size = sum(p.numel() * p.element_size() for p in scorer.model.parameters())
        self.patcher = comfy.model_patcher.ModelPatcher(
            _Holder(scorer.model),
            load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device(),
            size=size,
        )

    def loaded(self):
        """The core scorer, its model moved where ComfyUI chose after freeing memory for it: hand this to the core."""
        comfy.model_management.load_models_gpu([self.patcher])
        return self.scorer


class ManagedScorer(ManagedModel):
    """A managed :class:`ClipScorer`: what the CLIP Scorer Loader gives."""

    def score(self, images0: torch.Tensor, images1: torch.Tensor, captions0: list[str], captions1: list[str]):
        """The four similarities of BHWC image pairs; ComfyUI frees memory for the model first."""
        return self.loaded().score(images0.movedim(-1, 1), images1.movedim(-1, 1), captions0, captions1)


def chosen_folder(folder: str, choice: str, path: str, what: str) -> str:
    """The model folder a loader's list entry (``choice``) or typed ``path`` names; neither: where to put one."""
    if choice != BY_PATH:
        return host.model_folder_path(folder, choice, MODEL_MARKER)
    if not path.strip():
        raise IP2PError(
            f"No {what} model chosen: put a {what} folder in models/{folder} and pick it, or type its path."
        )
    return os.path.expanduser(path.strip())


def scorer_dtype() -> torch.dtype:
    """float16 where ComfyUI would run its own models in it, else float32."""
    device = comfy.model_management.get_torch_device()
    return torch.float16 if comfy.model_management.should_use_fp16(device) else torch.float32


class IP2PCLIPLoader:
    NODE_ID = "IP2PCLIPLoader"
    DISPLAY_NAME = "InstructPix2Pix CLIP Scorer Loader"
    DESCRIPTION = (
        "Loads a CLIP dual encoder in transformers format (config.json, weights, tokenizer, "
        "preprocessor_config.json — e.g. a local copy of openai/clip-vit-large-patch14, the paper's) from "
        f"models/{CLIP_FOLDER}, or from any folder given as path. Nothing is downloaded."
    )
    CATEGORY = f"{CATEGORY}/dataset"
    FUNCTION = "execute"
    RETURN_TYPES = (SCORER,)
    RETURN_NAMES = ("clip_scorer",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_model": ([BY_PATH, *host.model_folders(CLIP_FOLDER, MODEL_MARKER)], {"tooltip": f"A folder in models/{CLIP_FOLDER}."}),
                "path": ("STRING", {"default": "", "tooltip": f"A CLIP folder anywhere; used when clip_model is {BY_PATH}."}),
            }
        }  # fmt: skip

    @classmethod
    def execute(cls, clip_model, path):
        folder = chosen_folder(CLIP_FOLDER, clip_model, path, "CLIP")
        device = comfy.model_management.unet_offload_device()
        return (ManagedScorer(ClipScorer.from_folder(folder, device=device, dtype=scorer_dtype()), folder),)


def typed_pairs(count: int, input_caption: str, instruction: str, edited_caption: str) -> list[GeneratedPair]:
    """Pairs made elsewhere in a graph: every one gets the typed captions (both needed to score)."""
    if not input_caption.strip() or not edited_caption.strip():
        raise IP2PError(
            "These pairs carry no captions: connect 'pairs' from the pair generator, or type the input_caption and "
            "edited_caption the images show."
        )
    triple = PromptTriple(input_caption.strip(), instruction.strip(), edited_caption.strip())
    return [GeneratedPair(triple, None) for _ in range(count)]


def check_pair_batches(input_images: torch.Tensor, edited_images: torch.Tensor, pairs: list | None) -> None:
    if input_images.shape[0] != edited_images.shape[0]:
        raise IP2PError(
            f"{input_images.shape[0]} input image(s) but {edited_images.shape[0]} edited image(s): a pair needs one of each."
        )
    if pairs is not None and len(pairs) != input_images.shape[0]:
        raise IP2PError(
            f"{len(pairs)} pair record(s) for {input_images.shape[0]} image pair(s); connect matching batches."
        )


def preview_label(number: int, record: dict, reason: str | None) -> str:
    verdict = "kept" if reason is None else f"rejected by {reason.removeprefix('clip_')}"
    scores = "\n".join(
        f"{name.replace('sim_dir', 'dir').replace('sim_image', 'image')} {record[key]:.3f}"
        for name, key in METADATA_KEYS.items()
    )
    return f"#{number} {verdict}\n{scores}"


class IP2PCLIPFilter:
    NODE_ID = "IP2PCLIPFilter"
    DISPLAY_NAME = "InstructPix2Pix CLIP Filter"
    DESCRIPTION = (
        "Scores image pairs with CLIP as the paper does — sim_0 (input image vs input caption), sim_1 (edited image "
        "vs edited caption), directional (image change vs caption change), image (input vs edited image) — keeps "
        "those reaching every threshold, and of each prompt the best 'keep' by directional similarity. The preview "
        "shows every pair, kept or rejected, with its scores."
    )
    CATEGORY = f"{CATEGORY}/dataset"
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "IMAGE", PAIRS, "IMAGE", "STRING")
    RETURN_NAMES = ("input_images", "edited_images", "pairs", "preview", "summary")
    OUTPUT_TOOLTIPS = (
        "Kept input images (best first within each prompt).",
        "Kept edited images.",
        "Kept pairs with their four CLIP scores added.",
        "Every pair with its verdict and scores.",
        "How many were kept and why the others went.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        def threshold(default, tooltip):
            return ("FLOAT", {"default": default, "min": -1.0, "max": 1.0, "step": 0.01, "tooltip": tooltip})

        thresholds = FilterThresholds()
        return {
            "required": {
                "clip_scorer": (SCORER, {"tooltip": "From 'InstructPix2Pix CLIP Scorer Loader'."}),
                "input_images": ("IMAGE", {"tooltip": "The pairs' input images."}),
                "edited_images": ("IMAGE", {"tooltip": "The pairs' edited images, same order."}),
                "min_sim_0": threshold(thresholds.sim_0, "Minimum input image ↔ input caption similarity."),
                "min_sim_1": threshold(thresholds.sim_1, "Minimum edited image ↔ edited caption similarity."),
                "min_sim_dir": threshold(thresholds.sim_dir, "Minimum directional similarity."),
                "min_sim_image": threshold(thresholds.sim_image, "Minimum input ↔ edited image similarity."),
                "keep": ("INT", {"default": thresholds.keep, "min": 1, "max": 10000, "tooltip": "Best pairs kept per prompt."}),
            },
            "optional": {
                "pairs": (PAIRS, {"tooltip": "From the pair generator: captions and metadata per pair."}),
                "input_caption": ("STRING", {"default": "", "tooltip": "Without 'pairs': what the input images show."}),
                "instruction": ("STRING", {"default": "", "tooltip": "Without 'pairs': the edit instruction."}),
                "edited_caption": ("STRING", {"default": "", "tooltip": "Without 'pairs': what the edited images show."}),
            },
        }  # fmt: skip

    @classmethod
    def execute(cls, clip_scorer, input_images, edited_images, min_sim_0, min_sim_1, min_sim_dir, min_sim_image, keep,
                pairs=None, input_caption="", instruction="", edited_caption=""):  # fmt: skip
        thresholds = FilterThresholds(min_sim_0, min_sim_1, min_sim_dir, min_sim_image, keep)
        check_pair_batches(input_images, edited_images, pairs)
        if pairs is None:
            pairs = typed_pairs(input_images.shape[0], input_caption, instruction, edited_caption)
        scores = clip_scorer.score(
            input_images,
            edited_images,
            [p.prompt.input_caption for p in pairs],
            [p.prompt.edited_caption for p in pairs],
        )
        records = scores.as_dicts()
        groups: dict[tuple, list[int]] = {}  # one keep-best-k per prompt
        for number, pair in enumerate(pairs):
            groups.setdefault((pair.prompt_index, pair.prompt.key), []).append(number)
        kept, reasons = [], {}
        for members in groups.values():
            result = select_samples(scores.select(members), thresholds)
            kept += [members[i] for i in result.kept]
            reasons.update({members[i]: reason for i, reason in result.rejected.items()})
        scored = [pair.with_metadata(**record) for pair, record in zip(pairs, records, strict=True)]
        preview = pair_preview(
            input_images, edited_images, [preview_label(n, records[n], reasons.get(n)) for n in range(len(pairs))]
        )
        index = torch.tensor(kept, dtype=torch.long)
        summary = filter_summary(len(pairs), len(kept), reasons)
        return (
            input_images.index_select(0, index), edited_images.index_select(0, index), [scored[n] for n in kept],
            preview, summary,
        )  # fmt: skip


def pair_preview(input_images: torch.Tensor, edited_images: torch.Tensor, labels: list[str]) -> torch.Tensor:
    """One labelled sheet: a row per pair (input | edited), its label on the left. A 1-image IMAGE batch."""
    cells = torch.stack([input_images[..., :3], edited_images[..., :3]], dim=1).flatten(0, 1)
    sheet = grid.labelled_grid(cells, labels, ["input", "edited"], label_width=PREVIEW_LABEL_WIDTH)
    return sheet.unsqueeze(0)


def filter_summary(tried: int, kept: int, reasons: dict[int, str]) -> str:
    counts: dict[str, int] = {}
    for reason in reasons.values():
        counts[reason] = counts.get(reason, 0) + 1
    why = ", ".join(f"{n} by {reason}" for reason, n in sorted(counts.items()))
    return f"{kept} of {tried} pair(s) kept" + (f"; rejected {why}" if why else "")

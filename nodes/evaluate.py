"""Edit quality as a node: the paper's CLIP similarities and MagicBrush's target metrics of edits made anywhere in
a graph, scored by the core's ``score_edits`` (docs/metrics.md), as a table and a labelled sheet."""

from __future__ import annotations

import math

import torch

from ..ip2p import grid, sizing
from ..ip2p.errors import IP2PError
from ..ip2p.quality import scoring
from ..ip2p.quality.metrics import PAPER_METRICS, TARGET_METRICS
from .clip import SCORER
from .dino import DINO
from .inputs import CATEGORY

METRICS = PAPER_METRICS + TARGET_METRICS  # the toy world's need an edit mask, which no graph carries
# The core's reasons name the command line's options; here they name the node's inputs.
REASONS = {
    scoring.NO_CLIP: "no clip_scorer connected",
    scoring.NO_DINO: "no dino_scorer connected",
    scoring.NO_TARGET: "no target_images connected",
    scoring.NO_INPUT_CAPTION: "no input_caption typed",
    scoring.NO_OUTPUT_CAPTION: "no edited_caption typed",
}
SHEET_LABEL_WIDTH = 150  # px: "directional 0.1234" fits
SHEET_MIN_HEIGHT = 160  # px per row, so that every metric's line fits beside a small image


class IP2PEvaluate:
    NODE_ID = "IP2PEvaluate"
    DISPLAY_NAME = "InstructPix2Pix Evaluate"
    DESCRIPTION = (
        "Scores edits made by any model in the graph: the paper's CLIP similarities (sim_0, sim_1, directional: "
        "follows the instruction, image: keeps the input) and, with target images, MagicBrush's L1, L2, CLIP-I, DINO "
        "and CLIP-T. A metric that needs what is not connected is listed as skipped with the reason, never as 0. "
        "Returns a table and a sheet: one row per edit (input | edit | target) with its metrics beside it."
    )
    CATEGORY = f"{CATEGORY}/quality"
    FUNCTION = "execute"
    OUTPUT_NODE = True  # the table is shown on the node (and kept in the history) with nothing connected
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("metrics", "sheet")
    OUTPUT_TOOLTIPS = (
        "Every edit's metrics, their means, and the metrics skipped with why.",
        "One row per edit: input | edit | target, its metrics on the left.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_scorer": (SCORER, {"tooltip": "From 'InstructPix2Pix CLIP Scorer Loader'."}),
                "input_images": ("IMAGE", {"tooltip": "The images that were edited: one per edit, or one for all."}),
                "edited_images": ("IMAGE", {"tooltip": "The edits, from any model."}),
                "input_caption": ("STRING", {"default": "", "tooltip": "What the input images show (sim_0, directional)."}),
                "edited_caption": ("STRING", {"default": "", "tooltip": "What the edits should show (sim_1, directional, CLIP-T)."}),
                "instruction": ("STRING", {"default": "", "tooltip": "The edit asked for; heads the table."}),
            },
            "optional": {
                "target_images": ("IMAGE", {"tooltip": "The ground-truth edits (L1, L2, CLIP-I, DINO): one per edit, or one for all."}),
                "dino_scorer": (DINO, {"tooltip": "From 'InstructPix2Pix DINO Loader', for the DINO metric."}),
            },
        }  # fmt: skip

    @classmethod
    def execute(cls, clip_scorer, input_images, edited_images, input_caption, edited_caption, instruction,
                target_images=None, dino_scorer=None):  # fmt: skip
        edits = _channels_first(edited_images)
        count, size = edits.shape[0], (edits.shape[-1], edits.shape[-2])
        # The input as the edit frames it (the paper policy's crop, a plain resize for keep): what was edited.
        inputs = sizing.fit_crop(_per_edit(input_images, count, "input_images"), size)
        targets = None if target_images is None else _per_edit(target_images, count, "target_images")
        items = [
            scoring.EditToScore(
                input=inputs[i : i + 1],
                edit=edits[i : i + 1],
                target=None if targets is None else targets[i : i + 1],
                input_caption=input_caption.strip() or None,
                output_caption=edited_caption.strip() or None,
            )
            for i in range(count)
        ]
        rows = scoring.score_edits(
            items, clip=clip_scorer.loaded(), dino=None if dino_scorer is None else dino_scorer.loaded()
        )
        sheet = evaluation_sheet(inputs, edits, targets, rows)
        table = metrics_table(rows, instruction)
        return {"ui": {"text": [table]}, "result": (table, sheet.unsqueeze(0))}


def _channels_first(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI's B×H×W×C IMAGE as the core's B×3×H×W."""
    return images[..., :3].movedim(-1, 1)


def _per_edit(images: torch.Tensor, count: int, name: str) -> torch.Tensor:
    """``images`` as B×3×H×W, one per edit: a single image is shared by every edit."""
    if images.shape[0] not in (1, count):
        raise IP2PError(
            f"{images.shape[0]} {name} for {count} edited image(s): connect one per edit, in the same order, or a "
            f"single image shared by every edit."
        )
    return _channels_first(images).expand(count, -1, -1, -1)


def _reported(rows: list[dict]) -> tuple[list[str], dict[str, str]]:
    """The metrics any edit has, in the docs' order, and each other metric's reason (as the node's inputs say it)."""
    computed = [name for name in METRICS if any(name in row["metrics"] for row in rows)]
    skipped = {}
    for name in METRICS:
        if name not in computed:
            reasons = sorted({row["skipped"].get(name, "not computed") for row in rows})
            skipped[name] = "; ".join(REASONS.get(reason, reason) for reason in reasons)
    return computed, skipped


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def metrics_table(rows: list[dict], instruction: str = "") -> str:
    """One line per edit (#1, #2, …) and, for several, their means; then the metrics skipped and why."""
    computed, skipped = _reported(rows)
    width = max([len(name) for name in computed] + [7])
    lines = [f"instruction: {instruction.strip()}"] if instruction.strip() else []
    lines.append("edit  " + "  ".join(f"{name:>{width}}" for name in computed))

    def line(label: str, values: list[float | None]) -> str:
        cells = ("-" if v is None else f"{v:.4f}" for v in values)
        return f"{label:<4}  " + "  ".join(f"{c:>{width}}" for c in cells)

    for number, row in enumerate(rows, start=1):
        lines.append(line(f"#{number}", [row["metrics"].get(name) for name in computed]))
    if len(rows) > 1:
        means = [_mean([row["metrics"][n] for row in rows if n in row["metrics"]]) for n in computed]
        lines.append(line("mean", means))
    lines += [f"skipped {name}: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines)


def evaluation_sheet(
    inputs: torch.Tensor, edits: torch.Tensor, targets: torch.Tensor | None, rows: list[dict]
) -> torch.Tensor:
    """One H×W×3 sheet: a row per edit (input | edit | target, each at the edit's size, enlarged by a whole factor
    to at least :data:`SHEET_MIN_HEIGHT` px), its metrics on the left."""
    size = (edits.shape[-1], edits.shape[-2])
    columns = [inputs, edits] + ([] if targets is None else [sizing.fit_crop(targets, size)])
    cells = torch.stack([c.float() for c in columns], dim=1).flatten(0, 1)  # row-major: edit by edit
    factor = math.ceil(SHEET_MIN_HEIGHT / cells.shape[-2])
    if factor > 1:
        cells = torch.nn.functional.interpolate(cells, scale_factor=factor, mode="nearest")
    computed, _ = _reported(rows)
    labels = [
        "\n".join([f"#{n}", *(f"{name} {row['metrics'][name]:.4f}" for name in computed if name in row["metrics"])])
        for n, row in enumerate(rows, start=1)
    ]
    names = ["input", "edit"] + ([] if targets is None else ["target"])
    return grid.labelled_grid(cells.movedim(1, -1), labels, names, label_width=SHEET_LABEL_WIDTH)

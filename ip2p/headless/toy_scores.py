"""How well a model performs the toy world's edits, measured from pixels.

Each held-out toy example comes with its true edited image and its edit mask (exactly the pixels
the instruction changes). A model edits the input twice: once with the example's instruction and
once with a *wrong* one (another family's, :func:`wrong_instructions`). Distances are mean absolute
RGB differences in [0, 1], averaged over an example's pixels, then over the examples; they are the
toy metrics of :func:`ip2p.quality.scoring.score_edits` (``ip2p eval``'s), under the demo's names:

- ``inside.result_to_truth``: inside the mask, the edit against the true edit;
- ``inside.input_to_truth``: the baseline of changing nothing (the input against the truth);
- ``inside.wrong_instruction_to_truth``: the baseline of an edit that ignores the instruction's
  meaning (what the model does with another instruction) against the truth;
- ``outside.result_to_input``: outside the mask, the edit against the input (it should stay).

A model that follows instructions is far closer to the truth than both baselines inside the mask
and stays near the input outside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..datasets.toy import ToyExample, render_example
from ..errors import IP2PError
from ..images import to_rgb_array, to_uint8
from ..quality.scoring import EditToScore, score_edits
from .components import EditModel

DEMO_NAMES = {  # the demo's name of each toy metric (docs/metrics.md)
    "inside.result_to_truth": "toy.inside_to_truth",
    "inside.input_to_truth": "toy.input_to_truth",
    "inside.wrong_instruction_to_truth": "toy.wrong_instruction_to_truth",
    "outside.result_to_input": "toy.outside_change",
}


@dataclass
class ToyEdit:
    """One scored example: the edits made, and its four distances."""

    example: ToyExample
    wrong_instruction: str
    result: np.ndarray  # H×W×3 uint8, edited with the true instruction
    wrong_result: np.ndarray  # H×W×3 uint8, edited with the wrong one
    distances: dict[str, float] = field(default_factory=dict)


def wrong_instructions(instructions: Sequence[str], families: Sequence[str | None]) -> list[str | None]:
    """For each example, the instruction of the next example (cyclically) of another edit family: a wrong
    instruction for the baseline of ignoring the instruction's meaning. None where there is no other family
    (or the example has none)."""
    out: list[str | None] = []
    for i, family in enumerate(families):
        others = (j % len(families) for j in range(i + 1, i + len(families)))
        out.append(next((instructions[j] for j in others if family and families[j] not in (None, family)), None))
    return out


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    """An H×W×3 array in [0, 1] as a 1×3×H×W tensor."""
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]


def example_distances(example: ToyExample, result: np.ndarray, wrong_result: np.ndarray) -> dict[str, float]:
    """The example's four distances (:data:`DEMO_NAMES`), as ``ip2p eval`` scores them."""
    item = EditToScore(
        input=_tensor(to_rgb_array(example.input_image)),
        edit=_tensor(result / 255.0),
        target=_tensor(to_rgb_array(example.edited_image)),
        mask=torch.from_numpy(example.mask),
        wrong_edit=_tensor(wrong_result / 255.0),
    )
    (row,) = score_edits([item])
    return {name: row["metrics"][metric] for name, metric in DEMO_NAMES.items()}


def summarize(edits: Sequence[ToyEdit]) -> dict:
    """The mean of each distance over the examples, and the two ratios the toy world is judged by."""
    keys = edits[0].distances.keys()
    means = {k: float(np.nanmean([e.distances[k] for e in edits])) for k in keys}
    result = means["inside.result_to_truth"]
    return {
        "examples": len(edits),
        **means,
        # < 1: closer to the truth than the baseline; the toy world asks for at most 0.5 against both.
        "ratio.result_vs_input": result / means["inside.input_to_truth"],
        "ratio.result_vs_wrong_instruction": result / means["inside.wrong_instruction_to_truth"],
    }


EDIT_BATCH = 16  # examples per editor call


def edit_examples(
    model: EditModel, examples: Sequence[ToyExample], instructions: Sequence[str], settings
) -> list[np.ndarray]:
    """Each example's input edited by its instruction (H×W×3 uint8), as it would be alone, in batches."""
    from .editor import edit

    results = []
    for start in range(0, len(examples), EDIT_BATCH):
        chunk = examples[start : start + EDIT_BATCH]
        pixels = torch.stack([torch.from_numpy(to_rgb_array(e.input_image)).permute(2, 0, 1) for e in chunk])
        texts = list(instructions[start : start + EDIT_BATCH])
        edited = edit(model, pixels, settings, instructions=texts, progress=False)
        results += [to_uint8(image) for image in edited]
    return results


def score_toy_model(model: EditModel, seeds: Sequence[int], settings, size: int = 64) -> tuple[dict, list[ToyEdit]]:
    """Edit the toy examples of ``seeds`` with ``settings`` (an :class:`~.editor.EditSettings`; its
    instruction is replaced per example) and score them; returns the summary and the scored edits."""
    examples = [render_example(int(s), size) for s in seeds]
    wrong = wrong_instructions([e.instruction for e in examples], [e.family for e in examples])
    if None in wrong:
        raise IP2PError(
            f"The {len(examples)} held-out examples are all of the edit family {examples[0].family!r}: the "
            f"wrong-instruction baseline needs another family's instruction. Score more examples."
        )
    results = edit_examples(model, examples, [e.instruction for e in examples], settings)
    wrong_results = edit_examples(model, examples, wrong, settings)
    edits = [
        ToyEdit(e, w, r, wr, example_distances(e, r, wr))
        for e, w, r, wr in zip(examples, wrong, results, wrong_results, strict=True)
    ]
    return summarize(edits), edits

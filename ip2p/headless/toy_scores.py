"""How well a model performs the toy world's edits, measured from pixels.

Each held-out toy example comes with its true edited image and its edit mask (exactly the pixels
the instruction changes). A model edits the input twice: once with the example's instruction and
once with a *wrong* one (another example's instruction). Distances are mean absolute RGB
differences in [0, 1], averaged over an example's pixels, then over the examples:

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
from ..images import to_rgb_array, to_uint8
from ..quality.metrics import masked_distance
from .components import EditModel


@dataclass
class ToyEdit:
    """One scored example: the edits made, and its four distances."""

    example: ToyExample
    wrong_instruction: str
    result: np.ndarray  # H×W×3 uint8, edited with the true instruction
    wrong_result: np.ndarray  # H×W×3 uint8, edited with the wrong one
    distances: dict[str, float] = field(default_factory=dict)


def wrong_instructions(examples: Sequence[ToyExample]) -> list[str]:
    """For each example, the instruction of the next example that reads differently (cyclically)."""
    out = []
    for i, example in enumerate(examples):
        for shift in range(1, len(examples)):
            other = examples[(i + shift) % len(examples)].instruction
            if other != example.instruction:
                out.append(other)
                break
        else:
            raise ValueError("wrong_instructions needs at least two different instructions")
    return out


def _mean_distance(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """:func:`ip2p.quality.metrics.masked_distance` of two H×W×3 arrays."""
    return masked_distance(
        *(torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1) for x in (a, b)), torch.from_numpy(where)
    )


def example_distances(example: ToyExample, result: np.ndarray, wrong_result: np.ndarray) -> dict[str, float]:
    source, truth = to_rgb_array(example.input_image), to_rgb_array(example.edited_image)
    edited, wrong = result.astype(np.float32) / 255.0, wrong_result.astype(np.float32) / 255.0
    inside = example.mask
    return {
        "inside.result_to_truth": _mean_distance(edited, truth, inside),
        "inside.input_to_truth": _mean_distance(source, truth, inside),
        "inside.wrong_instruction_to_truth": _mean_distance(wrong, truth, inside),
        "outside.result_to_input": _mean_distance(edited, source, ~inside),
    }


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
    wrong = wrong_instructions(examples)
    results = edit_examples(model, examples, [e.instruction for e in examples], settings)
    wrong_results = edit_examples(model, examples, wrong, settings)
    edits = [
        ToyEdit(e, w, r, wr, example_distances(e, r, wr))
        for e, w, r, wr in zip(examples, wrong, results, wrong_results, strict=True)
    ]
    return summarize(edits), edits

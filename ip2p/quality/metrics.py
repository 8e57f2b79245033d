"""Edit-quality metrics, each defined once: the paper's CLIP similarities and MagicBrush's target metrics.

For an input image x, its edit e, a target (ground-truth edit) t, the input caption c_0 and the
target caption c_1, on L2-normalised embeddings (docs/metrics.md has the sources):

Brooks et al. 2023 (no target needed; :func:`ip2p.clip_filter.clip_scores`):
    sim_0       = cos(CLIP(x), c_0)
    sim_1       = cos(CLIP(e), c_1)
    directional = cos(CLIP(e) − CLIP(x), c_1 − c_0)    does the image change as the caption does
    image       = cos(CLIP(x), CLIP(e))                 is the input kept
MagicBrush (Zhang et al. 2023, evaluation/image_eval.py; need the target t):
    l1     = mean |e − t|        over pixels and channels, values in [0, 1], e resized to t's size
    l2     = mean (e − t)²       (the mean squared error, as MagicBrush reports it)
    clip_i = cos(CLIP(e), CLIP(t))
    dino   = cos(DINO(e), DINO(t))  (the ViT's class token)
    clip_t = cos(CLIP(e), c_1)   the edit against the target's caption: the same number as sim_1
The toy world (the edit mask M is known exactly; w is the same model's edit of x under a wrong instruction):
    toy.inside_to_truth = mean over M of |e − t|, toy.input_to_truth = mean over M of |x − t| (the baseline of
    changing nothing), toy.wrong_instruction_to_truth = mean over M of |w − t| (the baseline of ignoring the
    instruction), toy.hit_rate = share of M where |e − t| < |e − x|, toy.outside_change = mean outside M of |e − x|

Everything here is plain torch on tensors; a metric whose inputs are missing is not computed here
but reported as skipped by the caller, never as 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import IP2PError

PAPER_METRICS = ("sim_0", "sim_1", "directional", "image")
TARGET_METRICS = ("l1", "l2", "clip_i", "dino", "clip_t")
# The toy world's, where the edit mask is known (docs/metrics.md): inside the mask the edit against the truth
# and its two baselines (the unchanged input, the edit under a wrong instruction), the hit rate; outside it the
# change from the input.
TOY_METRICS = (
    "toy.inside_to_truth",
    "toy.input_to_truth",
    "toy.wrong_instruction_to_truth",
    "toy.hit_rate",
    "toy.outside_change",
)
ALL_METRICS = PAPER_METRICS + TARGET_METRICS + TOY_METRICS
HIGHER_IS_BETTER = {  # every other metric: higher is better
    "l1": False,
    "l2": False,
    "toy.inside_to_truth": False,
    "toy.input_to_truth": False,
    "toy.wrong_instruction_to_truth": False,
    "toy.outside_change": False,
}


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of B×D embeddings (a 1×D side is shared), in float32."""
    if (
        a.ndim != 2
        or b.ndim != 2
        or a.shape[1] != b.shape[1]
        or (1 not in (a.shape[0], b.shape[0]) and a.shape[0] != b.shape[0])
    ):
        raise IP2PError(f"Embeddings of mismatched shapes {tuple(a.shape)} and {tuple(b.shape)}; expected B×D each.")
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    return (a * b).sum(dim=-1)


def directional(
    input_emb: torch.Tensor, edit_emb: torch.Tensor, cap_0: torch.Tensor, cap_1: torch.Tensor
) -> torch.Tensor:
    """cos(e − x, c_1 − c_0) of unit-normalised embeddings (B×D each), as the paper's clip_similarity.py."""
    x, e, c0, c1 = (F.normalize(t.float(), dim=-1) for t in (input_emb, edit_emb, cap_0, cap_1))
    return cosine(e - x, c1 - c0)


def matched_to(edit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``edit`` (B×3×H×W in [0, 1]) at ``target``'s size: bicubic, antialiased when shrinking, clamped."""
    height, width = target.shape[-2:]
    if edit.shape[-2:] == (height, width):
        return edit.float()
    shrinking = edit.shape[-2] > height or edit.shape[-1] > width
    resized = F.interpolate(
        edit.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=shrinking
    )
    return resized.clamp(0, 1)


def pixel_distances(edit: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """MagicBrush's L1 and L2 of B edits against their targets (B×3×H×W in [0, 1]): each a (B,) tensor.

    The edit is brought to the target's size first (:func:`matched_to`); L2 is the mean squared error.
    """
    if edit.ndim != 4 or target.ndim != 4 or edit.shape[:2] != target.shape[:2]:
        raise IP2PError(
            f"Edits {tuple(edit.shape)} and targets {tuple(target.shape)} must both be B×3×H×W with the same B."
        )
    difference = matched_to(edit, target) - target.float()
    return {"l1": difference.abs().mean(dim=(1, 2, 3)), "l2": difference.pow(2).mean(dim=(1, 2, 3))}


def masked_distance(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    """Mean absolute difference of two 3×H×W images in [0, 1] over the pixels where the H×W ``where`` is true
    (per pixel: the mean over channels); NaN when there are none. The toy world's distance."""
    if not bool(where.any()):
        return float("nan")
    return float((a.float() - b.float()).abs().mean(dim=0)[where].mean())


def hit_rate(edit: torch.Tensor, source: torch.Tensor, truth: torch.Tensor, where: torch.Tensor) -> float:
    """The share of the pixels where ``where`` is true at which the edit is closer to the truth than to the
    input (3×H×W images in [0, 1]): 1 is a full edit, 0 an unchanged input; NaN without such pixels."""
    if not bool(where.any()):
        return float("nan")
    to_truth = (edit.float() - truth.float()).abs().mean(dim=0)
    to_input = (edit.float() - source.float()).abs().mean(dim=0)
    return float((to_truth < to_input)[where].float().mean())


def bootstrap_interval(
    values: Sequence[float], *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """The percentile bootstrap interval of the mean of ``values`` (None for fewer than two values).

    Deterministic in ``seed``, so a rerun reports the same interval for the same values.
    """
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if data.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarize(values: Sequence[float]) -> dict:
    """``{"mean", "ci95", "n"}`` of the finite ``values``."""
    finite = [v for v in values if math.isfinite(v)]
    interval = bootstrap_interval(finite)
    return {
        "mean": float(np.mean(finite)) if finite else None,
        "ci95": list(interval) if interval else None,
        "n": len(finite),
    }

"""Every metric of a batch of edits in one call: what ``ip2p eval`` and the Evaluate node score with.

:func:`score_edits` takes each edit with what is known about it (:class:`EditToScore`) and the
embedding models at hand, and returns per edit the values it could compute and, for every other
metric of :data:`~.metrics.ALL_METRICS`, the reason it could not: a metric whose inputs are
missing is skipped with the reason, never 0. Images are embedded once each, one model call per
image size. The formulas are :mod:`.metrics`'; docs/metrics.md says what each means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import metrics as m

# Why a metric was skipped (the reasons metrics.json counts).
NO_MODEL = "no --model: the dataset's own edited image is both the edit and the target"
NO_CLIP = "no --clip model given"
NO_DINO = "no --dino model given"
NO_TARGET = "the example has no target (edited) image"
NO_INPUT_CAPTION = "the example has no input caption"
NO_OUTPUT_CAPTION = "the example has no output (target) caption"
NO_MASK = "the example has no edit mask (the toy world's)"
NO_WRONG_EDIT = "no edit under a wrong instruction (made for toy-world examples, whose edit family is known)"
UNMATCHED_SIZES = "the input, target and mask are not of one size"

CLIP_METRICS = ("sim_0", "sim_1", "directional", "image", "clip_i", "clip_t")
WITH_TARGET = ("l1", "l2", "clip_i", "dino")  # compared with the target image


@dataclass(frozen=True)
class EditToScore:
    """One edit and what is known about it; everything but the input and the edit is optional."""

    input: torch.Tensor  # 1×3×H×W in [0, 1]
    edit: torch.Tensor  # 1×3×H×W in [0, 1]; brought to the target's size as metrics.matched_to does
    target: torch.Tensor | None = None  # 1×3×H×W: the ground-truth edit
    input_caption: str | None = None
    output_caption: str | None = None
    mask: torch.Tensor | None = None  # H×W bool: the pixels the edit should change (the toy world knows them)
    wrong_edit: torch.Tensor | None = None  # 1×3×H×W: the same model's edit under a wrong instruction (a baseline)


def score_edits(items: Sequence[EditToScore], *, clip=None, dino=None, edit_is_target: bool = False) -> list[dict]:
    """One ``{"metrics": {name: float}, "skipped": {name: reason}}`` per item, in order.

    ``clip`` embeds images and captions (``embed_images(B×3×H×W)``, ``embed_captions(list[str])``:
    an :class:`ip2p.clip_filter.ClipScorer`), ``dino`` images (:class:`.dino.DinoScorer`); either may
    be None. ``edit_is_target``: the edit is the dataset's own edited image (no model made it), so
    the metrics that compare it with the target are skipped.
    """
    rows = [{"metrics": {}, "skipped": _skips(item, clip, dino, edit_is_target)} for item in items]

    def wanted(name: str) -> list[int]:
        return [i for i, row in enumerate(rows) if name not in row["skipped"]]

    def put(name: str, indices: list[int], values) -> None:
        for i, value in zip(indices, values, strict=True):
            rows[i]["metrics"][name] = float(value)

    for i in wanted("toy.hit_rate"):
        _toy(items[i], rows[i])
    for i in wanted("l1"):
        distances = m.pixel_distances(items[i].edit, items[i].target)
        put("l1", [i], distances["l1"].tolist())
        put("l2", [i], distances["l2"].tolist())
    if clip is not None and items:
        edits = _embed(clip, [item.edit for item in items])
        inputs = _embed(clip, [item.input for item in items])
        if targets := wanted("clip_i"):
            put("clip_i", targets, m.cosine(edits[targets], _embed(clip, [items[i].target for i in targets])))
        put("image", wanted("image"), m.cosine(inputs[wanted("image")], edits[wanted("image")]))
        texts = sorted({c for item in items for c in (item.input_caption, item.output_caption) if c is not None})
        captions = dict(zip(texts, clip.embed_captions(texts), strict=True)) if texts else {}

        def caption(indices, which):
            return torch.stack([captions[getattr(items[i], which)] for i in indices])

        if indices := wanted("sim_0"):
            put("sim_0", indices, m.cosine(inputs[indices], caption(indices, "input_caption")))
        for name in ("sim_1", "clip_t"):
            if indices := wanted(name):
                put(name, indices, m.cosine(edits[indices], caption(indices, "output_caption")))
        if indices := wanted("directional"):
            c0, c1 = caption(indices, "input_caption"), caption(indices, "output_caption")
            put("directional", indices, m.directional(inputs[indices], edits[indices], c0, c1))
    if dino is not None and (targets := wanted("dino")):
        put(
            "dino",
            targets,
            m.cosine(_embed(dino, [items[i].edit for i in targets]), _embed(dino, [items[i].target for i in targets])),
        )
    return rows


def _skips(item: EditToScore, clip, dino, edit_is_target: bool) -> dict[str, str]:
    """The metrics ``item`` cannot have, each with the first reason that applies."""
    skipped: dict[str, str] = {}

    def skip(names, reason: str, when: bool = True) -> None:
        if when:
            for name in names:
                skipped.setdefault(name, reason)

    skip(WITH_TARGET, NO_MODEL, edit_is_target)
    skip(CLIP_METRICS, NO_CLIP, clip is None)
    skip(("dino",), NO_DINO, dino is None)
    skip(WITH_TARGET, NO_TARGET, item.target is None)
    skip(("sim_0", "directional"), NO_INPUT_CAPTION, item.input_caption is None)
    skip(("sim_1", "directional", "clip_t"), NO_OUTPUT_CAPTION, item.output_caption is None)
    skip(m.TOY_METRICS, NO_MASK, item.mask is None)
    skip(m.TOY_METRICS, NO_TARGET, item.target is None)
    skip(m.TOY_METRICS, NO_MODEL, edit_is_target)
    skip(("toy.wrong_instruction_to_truth",), NO_WRONG_EDIT, item.wrong_edit is None)
    return skipped


def _toy(item: EditToScore, row: dict) -> None:
    """The toy world's metrics inside and outside the edit mask (the input, target and mask of one size)."""
    edit, truth, source = m.matched_to(item.edit, item.target)[0], item.target[0], item.input[0]
    if source.shape != truth.shape or tuple(item.mask.shape) != tuple(truth.shape[-2:]):
        for name in m.TOY_METRICS:
            row["skipped"].setdefault(name, UNMATCHED_SIZES)
        return
    inside = item.mask
    values = {
        "toy.inside_to_truth": m.masked_distance(edit, truth, inside),
        "toy.input_to_truth": m.masked_distance(source, truth, inside),
        "toy.hit_rate": m.hit_rate(edit, source, truth, inside),
        "toy.outside_change": m.masked_distance(edit, source, ~inside),
    }
    if item.wrong_edit is not None:
        values["toy.wrong_instruction_to_truth"] = m.masked_distance(
            m.matched_to(item.wrong_edit, item.target)[0], truth, inside
        )
    row["metrics"].update(values)


def _embed(scorer, images: list[torch.Tensor]) -> torch.Tensor:
    """Embeddings of 1×3×H×W images of any sizes, one model call per size, in the order given."""
    by_size: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(i)
    result: list[torch.Tensor | None] = [None] * len(images)
    for indices in by_size.values():
        embedded = scorer.embed_images(torch.cat([images[i] for i in indices]))
        for i, row in zip(indices, embedded, strict=True):
            result[i] = row
    return torch.stack(result)

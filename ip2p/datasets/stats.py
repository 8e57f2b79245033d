"""What a dataset holds, from one pass over its examples: for ``ip2p dataset stats`` and for checks
before a long training run (are the CLIP scores where the filter put them? are the images the
size the trainer expects?).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from .fields import SEED, example_fields
from .rows import BadExampleError, EditDataset


def _numeric(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def dataset_stats(
    dataset: EditDataset, *, limit: int | None = None, progress: Callable[[int], object] | None = None
) -> dict:
    """Counts and ranges over the first ``limit`` examples (all by default), as a JSON-ready dict.

    Keys: ``path``, ``layout``, ``rows`` (usable at open), ``examined``, ``pairs`` (examined and
    decoded), ``prompts`` (distinct input caption, instruction, edited caption), ``with_captions``,
    ``skipped`` (at open and on decoding, by reason), ``image_sizes`` (``"WxH"`` → pairs, most
    common first), ``width`` / ``height`` (``[min, max]``), ``metadata`` (per numeric key but the
    seed: ``count``, ``mean``, ``min``, ``max``).
    """
    examined = len(dataset) if limit is None else min(limit, len(dataset))
    skipped = Counter(dataset.skipped)
    sizes: Counter = Counter()
    prompts = set()
    with_captions = pairs = 0
    values: dict[str, list[float]] = {}
    for index in range(examined):
        if progress is not None:
            progress(1)
        try:
            example = dataset[index]
        except BadExampleError as exc:
            skipped[exc.reason] += 1
            continue
        pairs += 1
        fields = example_fields(example)
        prompts.add((fields.input_caption, fields.instruction, fields.output_caption))
        with_captions += fields.input_caption is not None and fields.output_caption is not None
        sizes[example.input_image.size] += 1
        for key, value in fields.metadata.items():
            if key != SEED and _numeric(value):
                values.setdefault(key, []).append(float(value))
    return {
        "path": str(dataset.path),
        "layout": dataset.layout,
        "rows": len(dataset),
        "examined": examined,
        "pairs": pairs,
        "prompts": len(prompts),
        "with_captions": with_captions,
        "skipped": dict(sorted(skipped.items())),
        "image_sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common()},
        "width": [min(w for w, _ in sizes), max(w for w, _ in sizes)] if sizes else None,
        "height": [min(h for _, h in sizes), max(h for _, h in sizes)] if sizes else None,
        "metadata": {
            key: {"count": len(v), "mean": sum(v) / len(v), "min": min(v), "max": max(v)}
            for key, v in sorted(values.items())
        },
    }

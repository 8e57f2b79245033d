"""Automatic guidance: which (text_cfg, image_cfg) of a small sweep to keep, by one documented rule.

Among the settings whose CLIP image similarity (input vs edit) reaches a floor, the one with the
highest directional similarity: the edit that follows the instruction most while still showing the
input's scene. The default floor, 0.75, is the paper's image-image threshold for keeping a generated
pair. When no setting reaches it, the one that keeps the most of the input, and the reason says so.
Equal scores go to the smaller scales (text_cfg first, then image_cfg): the milder edit. Settings
whose scores are not finite are never chosen. docs/metrics.md ("Automatic guidance") states the rule
for users; this module only chooses, the callers edit and score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..errors import IP2PError
from ..plot import TradeoffPoint

DEFAULT_TEXT_CFG_VALUES = (5.0, 7.5, 10.0)  # around the paper's 7.5
DEFAULT_IMAGE_CFG_VALUES = (1.2, 1.5, 1.8)  # around the paper's 1.5; 9 edits in all
DEFAULT_MIN_IMAGE_SIMILARITY = 0.75  # the paper's CLIP image-image filter threshold
RULE = "highest directional similarity with image similarity >= the floor; else highest image similarity"


@dataclass(frozen=True)
class GuidanceChoice:
    """The chosen setting, why, and every scored setting of the sweep in the order given."""

    chosen: TradeoffPoint
    reason: str
    points: tuple[TradeoffPoint, ...]
    min_image_similarity: float
    reached_floor: bool  # False: no setting kept enough of the input, the fallback chose

    def table(self) -> str:
        """The sweep as aligned text, the chosen row marked, the reason last."""
        lines = ["text_cfg  image_cfg  directional  image"]
        for point in self.points:
            mark = "  <- chosen" if point is self.chosen else ""
            lines.append(
                f"{point.text_cfg:>8g}  {point.image_cfg:>9g}  {point.directional:>11.4f}  "
                f"{point.image_similarity:>5.4f}{mark}"
            )
        return "\n".join([*lines, self.reason])

    def record(self) -> dict:
        """What an edit's metadata keeps of the choice: the rule, the floor, the reason and every score."""
        return {
            "rule": RULE,
            "min_image_similarity": self.min_image_similarity,
            "reached_floor": self.reached_floor,
            "reason": self.reason,
            "sweep": [asdict(point) for point in self.points],
        }


def _scales(point: TradeoffPoint) -> str:
    return f"text_cfg {point.text_cfg:g}, image_cfg {point.image_cfg:g}"


def check_floor(min_image_similarity: float) -> float:
    """The floor as a float when it is a cosine similarity, else an error saying what to give."""
    if (
        not isinstance(min_image_similarity, (int, float))
        or isinstance(min_image_similarity, bool)
        or not -1.0 <= min_image_similarity <= 1.0
    ):
        raise IP2PError(
            f"The image similarity floor is {min_image_similarity!r}; a cosine similarity lies in [-1, 1], so give "
            f"a number in that range (default {DEFAULT_MIN_IMAGE_SIMILARITY}, the paper's filter threshold)."
        )
    return float(min_image_similarity)


def choose_guidance(
    points: Sequence[TradeoffPoint], min_image_similarity: float = DEFAULT_MIN_IMAGE_SIMILARITY
) -> GuidanceChoice:
    """The setting the rule keeps of ``points`` (one per setting, scored on one image or as means)."""
    min_image_similarity = check_floor(min_image_similarity)
    points = tuple(points)
    if not points:
        raise IP2PError("Automatic guidance got no scored settings; give at least one text_cfg and one image_cfg.")
    finite = [p for p in points if math.isfinite(p.directional) and math.isfinite(p.image_similarity)]
    if not finite:
        raise IP2PError(
            f"Every one of the {len(points)} edits of the sweep scored NaN or infinite, so none can be chosen: the "
            f"edits or the CLIP model produce non-finite values (try float32, or smaller scales)."
        )
    kept = [p for p in finite if p.image_similarity >= min_image_similarity]
    if kept:
        chosen = min(kept, key=lambda p: (-p.directional, p.text_cfg, p.image_cfg))
        reason = (
            f"Chose {_scales(chosen)}: the highest directional similarity ({chosen.directional:.4f}) of the "
            f"{len(kept)} of {len(points)} settings whose image similarity reaches {min_image_similarity:g}."
        )
    else:
        chosen = min(finite, key=lambda p: (-p.image_similarity, p.text_cfg, p.image_cfg))
        reason = (
            f"No setting keeps an image similarity of {min_image_similarity:g}; chose {_scales(chosen)}, which keeps "
            f"the most of the input ({chosen.image_similarity:.4f}). Lower the floor or try larger image_cfg values."
        )
    return GuidanceChoice(chosen, reason, points, min_image_similarity, bool(kept))

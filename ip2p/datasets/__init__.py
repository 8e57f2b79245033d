"""Instruction-editing datasets: one reader for every layout, the writers, and the toy world.

The trainer reads through :func:`open_dataset` (in :mod:`.reader`) whatever the layout: the paper's
folders (``prompt.json``, ``{seed}_0``/``{seed}_1`` images, optional ``seeds.json``) or Hugging Face
parquet / ``datasets`` folders with a column mapping. The data engine writes the same layouts.
Images stay PIL images here; resizing, cropping and flipping belong to the consumer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class EditExample:
    """One training pair: the input image, the instruction, the edited image, and where it came from."""

    input_image: Image.Image
    instruction: str
    edited_image: Image.Image
    key: str  # stable identity within its dataset (e.g. "0000123/4567" or "shard-00000:17")
    extra: dict = field(default_factory=dict)  # captions, seed, p2p_threshold, CLIP scores, edit mask …

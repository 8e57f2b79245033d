"""The fields both written layouts share, and how a read example's ``extra`` maps onto them.

Readers hand back ``extra`` dicts whose keys depend on the source (the paper layout gives
``input_caption`` / ``output_caption``, a hub dataset may call them ``original_prompt`` /
``edited_prompt``). :func:`example_fields` sorts one example's extras into what the writers take:
a prompt (``caption``, ``edit``, ``output``), JSON-ready metadata (``seed`` included), extra
images, and the names of values that fit nowhere (raw bytes, arrays), so a conversion can say
what it left out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from PIL import Image

from . import EditExample

# Parquet columns beside diffusers' three (input_image, edit_prompt, edited_image). The caption
# names are the ones the paper reader puts in ``extra``, so an example reads the same from either layout.
INPUT_CAPTION = "input_caption"
OUTPUT_CAPTION = "output_caption"
SEED = "seed"
PAPER_METADATA = ("p2p_threshold", "cfg_scale", "clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image")
METADATA_JSON = "metadata_json"  # every other metadata key, as one JSON object (a fixed schema for every shard)
EXAMPLE_KEY = "example_key"  # the writer's identity of an example: what a resumed run skips

# Where a source may keep its captions, in order of preference.
CAPTION_SOURCES = {
    INPUT_CAPTION: (INPUT_CAPTION, "original_prompt", "caption", "input"),
    OUTPUT_CAPTION: (OUTPUT_CAPTION, "edited_prompt", "output"),
}
_WRITER_OWNED = (EXAMPLE_KEY,)  # written by the writer itself; a conversion writes its own


@dataclass
class Fields:
    """One example sorted for the writers; captions are ``None`` when the source has none."""

    input_caption: str | None
    instruction: str
    output_caption: str | None
    metadata: dict = field(default_factory=dict)
    images: dict[str, Image.Image] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def prompt(self, *, fill: str | None = None) -> dict:
        """``{"caption", "edit", "output"}``; missing captions left out, or set to ``fill`` when given."""
        prompt = {"edit": self.instruction}
        for key, value in (("caption", self.input_caption), ("output", self.output_caption)):
            if value is not None or fill is not None:
                prompt[key] = value if value is not None else fill
        return prompt

    def seed(self) -> int | None:
        """The seed when it is a whole number (a float such as ``7.0`` counts), else ``None``."""
        value = self.metadata.get(SEED)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            return None
        return int(value)


def _json_ready(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def example_fields(example: EditExample) -> Fields:
    """Sort ``example.extra`` into captions, metadata (``metadata_json`` unpacked), images and the rest."""
    extra = {k: v for k, v in example.extra.items() if v is not None and k not in _WRITER_OWNED}
    captions = {}
    for target, sources in CAPTION_SOURCES.items():
        found = next((name for name in sources if isinstance(extra.get(name), str)), None)
        captions[target] = extra.pop(found) if found is not None else None
    packed = extra.pop(METADATA_JSON, None)
    metadata: dict = {}
    if isinstance(packed, str):
        try:
            unpacked = json.loads(packed)
        except json.JSONDecodeError:
            unpacked = None
        if isinstance(unpacked, dict):
            metadata.update(unpacked)
        else:
            extra[METADATA_JSON] = packed  # not ours: kept as a value like any other
    fields = Fields(captions[INPUT_CAPTION], example.instruction, captions[OUTPUT_CAPTION], metadata)
    for name, value in extra.items():
        if isinstance(value, Image.Image):
            fields.images[name] = value
        elif _json_ready(value):
            fields.metadata[name] = value
        else:
            fields.dropped.append(name)
    return fields

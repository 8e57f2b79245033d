"""LoRA adapters merged into a loaded model's UNet before sampling (``ip2p edit --lora``, ``ip2p lora merge``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from .. import lora
from ..formats import convert
from ..formats.hashing import model_hash
from .components import EditModel

logger = logging.getLogger(__name__)


def original_names(unet) -> dict[str, str]:
    """{original UNet key (``input_blocks.0.0.weight``): diffusers key (``conv_in.weight``)} for this UNet."""
    keys = {key: key for key in unet.state_dict()}
    return {
        original: diffusers for original, diffusers in convert.unet_diffusers_to_original(keys, unet.config).items()
    }


def apply_loras(model: EditModel, adapters: Sequence[tuple[str | os.PathLike, float]]) -> list[dict]:
    """Merge each ``(adapter file, strength)`` into ``model.unet``'s weights, in order; returns what was applied
    (file name, hash and strength: what an edit's metadata records to be reproducible).

    Every adapter is read and checked against the UNet before any weight changes, so a refused
    adapter leaves the model as it was.
    """
    names = original_names(model.unet) if adapters else {}
    state = model.unet.state_dict()
    planned = []
    for path, strength in adapters:
        strength = lora.check_strength(strength, source=f"--lora-strength of {path}")
        tensors, metadata = lora.read_adapter(path)
        deltas = lora.adapter_deltas(tensors, state, names, source=f"LoRA {path}")
        planned.append((path, strength, deltas, metadata))
    applied = []
    for path, strength, deltas, metadata in planned:
        lora.merge_deltas(model.unet, deltas, strength, source=f"LoRA {path}")
        base = metadata.get("base_model_hash")
        if base and base != model.model_hash:
            logger.warning("LoRA %s was trained on base %s; this model is %s", path, base, model.model_hash)
        logger.info("Merged LoRA %s at strength %g (%d weights)", path, strength, len(deltas))
        applied.append({"file": os.path.basename(str(path)), "hash": model_hash(path), "strength": strength})
    return applied

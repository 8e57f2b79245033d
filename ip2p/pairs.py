"""The data engine's pairs, for every host: which seed, p and cfg each sample of a prompt gets, and
what a generated pair carries from the sampler to the CLIP filter and the dataset writer.

A sample's values come from the run seed, the prompt triple's key and the sample's number alone,
so the ComfyUI nodes and ``ip2p generate`` make the same pairs for the same run seed, whatever
the batch size, the number of processes or the order the prompts are run in.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from .devices import MAX_SEED
from .errors import IP2PError
from .prompts import PromptTriple


def check_range(name: str, bounds: Sequence[float]) -> tuple[float, float]:
    """A (low, high) uniform range, checked; low == high is a fixed value."""
    low, high = (float(b) for b in bounds)
    if not low <= high:
        raise IP2PError(f"{name} range ({low:g}, {high:g}) is reversed; give the low value first.")
    return low, high


def sample_plan(
    key: str, samples: int, *, run_seed: int, p2p_fraction: Sequence[float], cfg: Sequence[float]
) -> list[dict]:
    """The paper's keys for each of a prompt's ``samples``: ``seed``, ``p2p_threshold`` ~ U(p2p_fraction)
    and ``cfg_scale`` ~ U(cfg), from ``run_seed``, the triple's ``key`` and the sample's number only."""
    p_range, cfg_range = check_range("p2p_fraction", p2p_fraction), check_range("cfg", cfg)
    plan = []
    for number in range(samples):
        digest = hashlib.sha256(f"{run_seed}:{key}:{number}".encode()).digest()
        seed = int.from_bytes(digest[:8], "big") % (MAX_SEED + 1)
        rng = random.Random(seed)
        plan.append({"seed": seed, "p2p_threshold": rng.uniform(*p_range), "cfg_scale": rng.uniform(*cfg_range)})
    return plan


@dataclass(frozen=True)
class GeneratedPair:
    """One pair's identity beside its images: the prompt it was made from, that prompt's index in its
    source (None for pairs from elsewhere in a graph) and its metadata in the paper's keys (seed,
    p2p_threshold, cfg_scale, and the CLIP scores once scored)."""

    prompt: PromptTriple
    prompt_index: int | None
    metadata: dict = field(default_factory=dict)

    def with_metadata(self, **values) -> GeneratedPair:
        return GeneratedPair(self.prompt, self.prompt_index, {**self.metadata, **values})

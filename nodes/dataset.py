"""The data engine's last node: write pairs into a dataset, a prompt at a time, as ``ip2p generate`` does.

Pairs from the pair generator are written under their prompt's index in the prompt file, so
"queue N" with an incrementing prompt source fills the dataset prompt by prompt, a prompt already
complete is skipped, and several ComfyUI instances (or ``ip2p generate`` processes) may write one
dataset. Pairs from elsewhere in a graph (captions typed in) get a prompt number of their own,
claimed atomically from :data:`TYPED_PROMPTS_START` on, where no prompt file reaches.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..ip2p.datasets.locks import claim
from ..ip2p.datasets.outputs import LAYOUTS, open_output
from ..ip2p.datasets.paper import folder_name
from ..ip2p.errors import IP2PError
from ..ip2p.pairs import GeneratedPair
from . import host
from .clip import check_pair_batches, typed_pairs
from .inputs import CATEGORY
from .pairs import PAIRS

TYPED_PROMPTS_START = 5_000_000
CLAIMS = ".typed-prompts"  # the claim files of typed prompts' numbers


def dataset_root(name: str) -> Path:
    """An absolute folder as given; a relative one under ComfyUI's output folder."""
    path = os.path.expanduser(name.strip())
    if not path:
        raise IP2PError("No dataset folder given: type a folder name (it is made under ComfyUI's output folder).")
    if os.path.isabs(path):
        return Path(path)
    try:
        return Path(host.folder_paths().get_output_directory()) / path
    except (IP2PError, AttributeError):
        return Path(path).resolve()


def claim_typed_prompt(root: Path) -> int:
    """A prompt number no other writer of ``root`` has or will get."""
    (root / CLAIMS).mkdir(parents=True, exist_ok=True)
    number = TYPED_PROMPTS_START + len(os.listdir(root / CLAIMS))
    while not claim(root / CLAIMS / folder_name(number)):
        number += 1
    return number


def numbered(pairs: list[GeneratedPair], root: Path) -> list[GeneratedPair]:
    """Pairs not from a prompt file get a claimed prompt number per prompt, and their row as seed if they have none."""
    numbers: dict[str, int] = {}
    out = []
    for row, pair in enumerate(pairs):
        if not pair.prompt.instruction.strip():
            raise IP2PError("A pair carries no instruction: type the instruction the edited images follow.")
        if pair.prompt_index is None:
            number = numbers.get(pair.prompt.key)
            if number is None:
                number = numbers[pair.prompt.key] = claim_typed_prompt(root)
            pair = GeneratedPair(pair.prompt, number, {"seed": row, **pair.metadata})
        out.append(pair)
    return out


class IP2PDatasetWriter:
    NODE_ID = "IP2PDatasetWriter"
    DISPLAY_NAME = "InstructPix2Pix Dataset Writer"
    DESCRIPTION = (
        "Writes (input image, instruction, edited image) pairs into an instruction-editing dataset: the paper's "
        "layout (prompt folders with prompt.json, {seed}_0.jpg, {seed}_1.jpg, metadata.jsonl, seeds.json) or Hugging "
        "Face parquet shards. A prompt is written whole and marked done; a prompt already done is skipped. The "
        "dataset loads in `ip2p train` and with `ip2p dataset stats`."
    )
    CATEGORY = f"{CATEGORY}/dataset"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("summary",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "input_images": ("IMAGE", {"tooltip": "The pairs' input images."}),
                "edited_images": ("IMAGE", {"tooltip": "The pairs' edited images, same order."}),
                "dataset_folder": (
                    "STRING",
                    {"default": "ip2p_dataset", "tooltip": "Absolute, or relative to ComfyUI's output folder."},
                ),
                "layout": (list(LAYOUTS), {"default": "paper", "tooltip": "paper (folders) or parquet (HF shards)."}),
            },
            "optional": {
                "pairs": (PAIRS, {"tooltip": "From the pair generator or the CLIP filter: prompt and metadata per pair."}),
                "input_caption": ("STRING", {"default": "", "tooltip": "Without 'pairs': what the input images show."}),
                "instruction": ("STRING", {"default": "", "tooltip": "Without 'pairs': the edit instruction."}),
                "edited_caption": ("STRING", {"default": "", "tooltip": "Without 'pairs': what the edited images show."}),
            },
        }  # fmt: skip

    @classmethod
    def execute(cls, input_images, edited_images, dataset_folder, layout, pairs=None, input_caption="",
                instruction="", edited_caption=""):  # fmt: skip
        check_pair_batches(input_images, edited_images, pairs)
        root = dataset_root(dataset_folder)
        if input_images.shape[0] == 0:
            summary = f"{root}: nothing to write (no pair was kept)"
            return {"ui": {"text": [summary]}, "result": (summary,)}
        if pairs is None:
            pairs = typed_pairs(input_images.shape[0], input_caption, instruction, edited_caption)
        pairs = numbered(pairs, root)
        prompts: dict[int, list[int]] = {}
        for row, pair in enumerate(pairs):
            prompts.setdefault(pair.prompt_index, []).append(row)
        written = skipped = rows = 0
        with open_output(layout, root) as output:
            for index, members in prompts.items():
                host.throw_if_interrupted()
                triple = pairs[members[0]].prompt
                if output.is_done(index, triple):
                    skipped += 1
                    continue
                kept = [
                    (pairs[n].metadata, torch.stack([input_images[n], edited_images[n]])[..., :3].movedim(-1, 1))
                    for n in members
                ]
                output.write(index, triple, kept, {"kept": len(kept), "key": triple.key})
                written += 1
                rows += len(kept)
        summary = f"{root}: {rows} pair(s) of {written} prompt(s) written, {skipped} prompt(s) already done"
        return {"ui": {"text": [summary]}, "result": (summary,)}

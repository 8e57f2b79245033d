"""Reading the paper's folder layout (the writer is :mod:`.paper`).

``ROOT/NNNNNNN/prompt.json`` holds the input caption (``caption`` as the generator writes it, or
``input`` as the released prompts have it), the instruction ``edit`` and the edited caption
``output``; beside it the pairs ``{seed}_0.{jpg,jpeg,png,webp}`` (input) and ``{seed}_1.…``
(edited), and optionally ``metadata.jsonl`` (one JSON object per seed: ``seed``,
``p2p_threshold``, ``cfg_scale``, ``clip_sim_*`` …). A root ``seeds.json``
(``[[dir, [seed, ...]], ...]``) lists exactly which pairs belong to the dataset; without it every
folder is scanned.

Open time reads each folder's listing and ``prompt.json`` (kept in memory: three short strings
per folder) and, with ``verify_images``, two image headers per pair. ``metadata.jsonl`` is read
when an example of its folder is loaded (one folder cached).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from ..errors import IP2PError
from . import EditExample
from .rows import (
    BAD_PROMPT,
    EMPTY_INSTRUCTION,
    MISSING_IMAGE,
    MISSING_PROMPT,
    BadExampleError,
    EditDataset,
    SkipCounter,
    check_pair_headers,
    checked_pair,
)

logger = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # preference order when a seed has several
_PAIR_FILE = re.compile(r"^(\d+)_([01])(\.[A-Za-z]+)$")
_PROMPT_KEYS = ("caption", "input", "edit", "output")
MASK = "mask"  # {seed}_mask.png beside a pair: its edit mask (white: the pixels the edit changes)


def _pair_files(names: list[str]) -> dict[int, dict[int, str]]:
    """seed → {0: file name, 1: file name} among ``names`` (either side may be absent)."""
    found: dict[int, dict[int, str]] = {}
    for name in names:
        match = _PAIR_FILE.match(name)
        if not match or match.group(3).lower() not in EXTENSIONS:
            continue
        seed, side = int(match.group(1)), int(match.group(2))
        current = found.setdefault(seed, {}).get(side)
        rank = EXTENSIONS.index(match.group(3).lower())
        if current is None or rank < EXTENSIONS.index(Path(current).suffix.lower()):
            found[seed][side] = name
    return found


def _subfolders(root: Path) -> list[str]:
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def is_paper_layout(root: Path) -> bool:
    """A ``seeds.json``, or a subfolder holding ``prompt.json`` or a ``{seed}_0``/``{seed}_1`` image."""
    if (root / "seeds.json").is_file():
        return True
    for name in _subfolders(root):
        names = os.listdir(root / name)
        if "prompt.json" in names or _pair_files(names):
            return True
    return False


def _read_seeds_json(root: Path) -> list[tuple[str, list[int]]]:
    path = root / "seeds.json"
    shape = 'a list of [folder, [seed, ...]] pairs, e.g. [["0000000", [12, 34]]]'
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IP2PError(
            f"{path} could not be read as JSON ({exc}). Fix or delete it (then every folder is scanned)."
        ) from exc
    if not isinstance(entries, list):
        raise IP2PError(f"{path} holds a {type(entries).__name__}; expected {shape}.")
    listed: dict[str, set[int]] = {}
    for entry in entries:
        try:
            folder, seeds = entry
            seeds = {int(seed) for seed in seeds}
        except (TypeError, ValueError) as exc:
            raise IP2PError(f"{path} has the entry {entry!r}; expected {shape}.") from exc
        listed.setdefault(str(folder), set()).update(seeds)
    return [(folder, sorted(seeds)) for folder, seeds in sorted(listed.items())]


def _read_prompt(folder: Path) -> dict | None:
    """The parsed ``prompt.json``, or ``None`` when it is not a JSON object."""
    try:
        prompt = json.loads((folder / "prompt.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return prompt if isinstance(prompt, dict) else None


class PaperDataset(EditDataset):
    """Pairs of the paper's layout; see the module docstring."""

    layout = "paper"

    def __init__(
        self,
        root: Path,
        folders: list[str],
        prompts: list[dict],
        entries: list[tuple[int, int, str, str]],
        skipped: dict[str, int],
    ) -> None:
        super().__init__(root, skipped)
        self._folders = folders
        self._prompts = prompts  # per folder: instruction, captions and any other prompt.json keys
        self._entries = entries  # (folder index, seed, input file name, edited file name)
        self._metadata_cache: tuple[int, dict[int, dict]] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def _key(self, index: int) -> str:
        folder, seed, _, _ = self._entries[index]
        return f"{self._folders[folder]}/{seed}"

    def _load(self, index: int) -> EditExample:
        folder_index, seed, input_name, edited_name = self._entries[index]
        folder = self.path / self._folders[folder_index]
        key = self._key(index)
        input_image, edited_image = checked_pair(folder / input_name, folder / edited_name, key)
        prompt = self._prompts[folder_index]
        extra = {k: v for k, v in prompt.items() if k != "edit"}
        extra["seed"] = seed
        extra.update({k: v for k, v in self._metadata(folder_index).get(seed, {}).items() if k != "seed"})
        mask = folder / f"{seed}_{MASK}.png"
        if mask.is_file():  # an edit mask (``ip2p dataset toy`` writes the exact one): an image like any other extra
            extra[MASK] = _read_mask(mask, edited_image.size, key)
        return EditExample(input_image, prompt["edit"], edited_image, key, extra)

    def _metadata(self, folder_index: int) -> dict[int, dict]:
        if self._metadata_cache is None or self._metadata_cache[0] != folder_index:
            self._metadata_cache = (folder_index, _read_metadata(self.path / self._folders[folder_index]))
        return self._metadata_cache[1]


def _read_mask(path: Path, size: tuple[int, int], key: str):
    """An edit mask file as a greyscale PIL image; one of another size than its pair is refused."""
    from PIL import Image

    with Image.open(path) as image:
        if image.size != size:
            raise IP2PError(f"{key}: its edit mask {path.name} is {image.size}, its images {size}. Rewrite the pair.")
        return image.convert("L")


def _read_metadata(folder: Path) -> dict[int, dict]:
    """seed → metadata from ``metadata.jsonl``; lines that are not a JSON object with a seed are reported."""
    path = folder / "metadata.jsonl"
    if not path.is_file():
        return {}
    by_seed: dict[int, dict] = {}
    bad_lines: list[int] = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                by_seed[int(record["seed"])] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                bad_lines.append(number)
    if bad_lines:
        logger.warning(
            "%s: ignored %d line(s) that are not a JSON object with a seed (line %s)",
            path,
            len(bad_lines),
            ", ".join(map(str, bad_lines[:5])),
        )
    return by_seed


def _normalise_prompt(prompt: dict) -> dict:
    """``edit`` plus ``input_caption`` / ``output_caption`` (from ``caption`` or ``input``, and ``output``)."""
    out = {"edit": prompt["edit"]}
    caption = prompt.get("caption", prompt.get("input"))
    if caption is not None:
        out["input_caption"] = caption
    if prompt.get("output") is not None:
        out["output_caption"] = prompt["output"]
    out.update({k: v for k, v in prompt.items() if k not in _PROMPT_KEYS})
    return out


def open_paper(root: Path, *, verify_images: bool = True) -> PaperDataset:
    """Open the paper's layout at ``root``; bad pairs are counted and left out (see :mod:`.reader`)."""
    skips = SkipCounter()
    listed = _read_seeds_json(root) if (root / "seeds.json").is_file() else None
    candidates = listed if listed is not None else [(name, None) for name in _subfolders(root)]

    folders: list[str] = []
    prompts: list[dict] = []
    entries: list[tuple[int, int, str, str]] = []
    for done, (name, wanted) in enumerate(candidates, start=1):
        if done % 10_000 == 0:
            logger.info(
                "Reading %s: %d of %d prompt folders, %d pairs so far", root, done, len(candidates), len(entries)
            )
        folder = root / name
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        files = _pair_files(names)
        seeds = wanted if wanted is not None else sorted(files)
        if not seeds:
            continue  # an unrelated folder, or a prompt whose pairs were all filtered out
        if "prompt.json" not in names:
            skips.add(MISSING_PROMPT, f"{name}/{seeds[0]}", len(seeds))
            continue
        prompt = _read_prompt(folder)
        if prompt is None:
            skips.add(BAD_PROMPT, f"{name}/{seeds[0]}", len(seeds))
            continue
        edit = prompt.get("edit")
        if not isinstance(edit, str) or not edit.strip():
            skips.add(EMPTY_INSTRUCTION, f"{name}/{seeds[0]}", len(seeds))
            continue
        folder_index = len(folders)
        kept_before = len(entries)
        for seed in seeds:
            key = f"{name}/{seed}"
            pair = files.get(seed, {})
            if 0 not in pair or 1 not in pair:
                skips.add(MISSING_IMAGE, key)
                continue
            if verify_images:
                try:
                    check_pair_headers(folder / pair[0], folder / pair[1], key)
                except BadExampleError as exc:
                    skips.add(exc.reason, key)
                    continue
            entries.append((folder_index, seed, pair[0], pair[1]))
        if len(entries) > kept_before:
            folders.append(name)
            prompts.append(_normalise_prompt(prompt))

    skips.report(root, len(entries), "image pairs")
    if not entries:
        found = f" Skipped: {skips.summary()}." if skips.counts else ""
        restricted = " listed in seeds.json" if listed is not None else ""
        raise IP2PError(
            f"No usable examples in {root}: looked for prompt folders{restricted} with prompt.json and "
            f"{{seed}}_0/{{seed}}_1 image pairs ({', '.join(EXTENSIONS)}).{found}"
        )
    return PaperDataset(root, folders, prompts, entries, skips.counts)

"""Writing the paper's folder layout (the reader is :mod:`.paper_reader`).

::

    ROOT/seeds.json                 [[dir, [seed, ...]], ...]: the finished pairs, written by finish()
    ROOT/NNNNNNN/prompt.json        {"caption": input caption, "edit": instruction, "output": edited caption}
    ROOT/NNNNNNN/{seed}_0.png       the input image ({seed}_0.jpg with image_format="jpg", as the paper)
    ROOT/NNNNNNN/{seed}_1.png       the edited image
    ROOT/NNNNNNN/{seed}_{name}.png  extra images, always PNG (e.g. the toy world's 1-bit ``mask``)
    ROOT/NNNNNNN/metadata.jsonl     one JSON object per seed: {"seed": …, p2p_threshold, cfg_scale, clip_sim_* …}

``NNNNNNN`` is the prompt's index, seven digits. The writer writes the key ``caption`` as the
paper's generator does (the reader also accepts ``input``, as in the released prompts).

Atomic and resumable: every file appears whole (temp file + rename, :mod:`ip2p.formats.atomic`),
and a pair's ``metadata.jsonl`` line is written last, so a pair counts as finished only when its
line and both images exist (a pair being replaced loses its line first). :meth:`PaperLayoutWriter.has`
tells a resumed run which pairs to skip.

Several processes may write one dataset, even the same prompt folder. A prompt folder belongs to
the first ``prompt.json`` written into it: another writer with a different prompt for that index
is refused, never mixed in. Every read-modify-write of a folder's ``prompt.json`` and
``metadata.jsonl`` holds the lock ``ROOT/.writer.lock`` (:mod:`.locks`; held for milliseconds,
dropped by the OS if a process dies), so no writer loses another's lines. :meth:`PaperLayoutWriter.finish`
rebuilds ``seeds.json`` from what is on disk under ``ROOT/.seeds.lock``, so the last ``finish()``
to run lists every pair finished before it, whichever process calls it. For an all-or-nothing
dataset, write into :func:`~ip2p.formats.atomic.atomic_dir`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import IP2PError
from ..formats.atomic import atomic_file
from .locks import exclusive

FOLDER_DIGITS = 7
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}  # the pair's extension → PIL format
PAIR_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # what finish() accepts as an existing pair image
EXTRA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_TEXT_KEYS = ("caption", "input", "output")
WRITER_LOCK = ".writer.lock"  # held around prompt.json / metadata.jsonl updates
SEEDS_LOCK = ".seeds.lock"  # held while finish() scans and writes seeds.json


def folder_name(prompt_index: int) -> str:
    """The prompt folder's name: the index in seven digits (``0000042``)."""
    if prompt_index < 0:
        raise IP2PError(f"A prompt index must be 0 or more (got {prompt_index}).")
    return f"{prompt_index:0{FOLDER_DIGITS}d}"


def check_prompt(prompt: Mapping) -> dict:
    """``prompt`` as a dict, refused early (before any file is written) without an instruction or with non-text captions."""
    edit = prompt.get("edit")
    if not isinstance(edit, str) or not edit.strip():
        raise IP2PError(f"A prompt needs a non-empty instruction under 'edit'; got {dict(prompt)!r}.")
    for key in _TEXT_KEYS:
        if key in prompt and not isinstance(prompt[key], str):
            raise IP2PError(f"The prompt's {key!r} must be text; got {type(prompt[key]).__name__} in {dict(prompt)!r}.")
    return dict(prompt)


def as_image(value, name: str) -> Image.Image:
    """A PIL image from a PIL image or a numpy array (bool → 1-bit, uint8 H×W → L, H×W×3/4 → RGB/RGBA)."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == bool and value.ndim == 2:
            return Image.fromarray(value)  # mode "1": a 1-bit PNG
        if value.dtype == np.uint8 and (value.ndim == 2 or (value.ndim == 3 and value.shape[2] in (3, 4))):
            return Image.fromarray(value)
    described = f"array {value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
    raise IP2PError(
        f"Image {name!r} is a {described}; expected a PIL image, a bool H×W mask or a uint8 H×W(×3/4) array."
    )


def _save(image: Image.Image, path: Path, pil_format: str) -> None:
    with _writing(path) as tmp:
        if pil_format == "JPEG":
            image.convert("RGB").save(tmp, format="JPEG", quality=95)
        else:
            image.save(tmp, format=pil_format)


def write_text_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all, a failure (a full disk) said as :func:`cannot_write` says it."""
    with _writing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def cannot_write(path: Path, exc: OSError) -> IP2PError:
    """A failed write as a user error: a full disk named as such, with the fix (free space, rerun to resume)."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = f"the disk is full ({reason})"
    return IP2PError(
        f"Cannot write {path}: {reason}. Free disk space (or choose another folder) and run again: it resumes, "
        f"keeping what was finished."
    )


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """:func:`atomic_file`, with a failed write (a full disk) reported by :func:`cannot_write`."""
    try:
        with atomic_file(path) as tmp:
            yield tmp
    except OSError as exc:
        raise cannot_write(path, exc) from exc


def _metadata_lines(path: Path) -> list[tuple[int | None, str]]:
    """(seed or None when unreadable, line) for each non-empty line of a ``metadata.jsonl``."""
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            seed = int(json.loads(line)["seed"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            seed = None
        lines.append((seed, line))
    return lines


class PaperLayoutWriter:
    """Adds pairs to a dataset in the paper's layout at ``root`` (created if missing); see the module docstring.

    ``image_format``: ``"png"`` (lossless; the toy world) or ``"jpg"`` (quality 95, as the paper's
    data). Extra images are always PNG.
    """

    def __init__(self, root: str | os.PathLike, *, image_format: str = "png") -> None:
        if image_format not in IMAGE_FORMATS:
            raise IP2PError(f"Unknown image format {image_format!r}; choose one of {', '.join(IMAGE_FORMATS)}.")
        self.root = Path(root)
        self.image_format = image_format
        self._known_prompts: dict[str, dict] = {}  # folders whose prompt.json this writer has checked

    def folder(self, prompt_index: int) -> Path:
        return self.root / folder_name(prompt_index)

    def has(self, prompt_index: int, seed: int) -> bool:
        """Whether the pair is finished: its ``metadata.jsonl`` line and both images exist (resume skips it)."""
        folder = self.folder(prompt_index)
        if not all((folder / f"{seed}_{side}.{self.image_format}").is_file() for side in (0, 1)):
            return False
        return any(s == seed for s, _ in _metadata_lines(folder / "metadata.jsonl"))

    def add(
        self,
        prompt_index: int,
        prompt: Mapping,
        seed: int,
        image0,
        image1,
        metadata: Mapping | None = None,
        extra_images: Mapping | None = None,
    ) -> Path:
        """Write one pair (replacing an earlier one of the same seed) and return its folder.

        ``prompt``: ``{"caption", "edit", "output"}`` (``edit`` required; other keys are kept).
        A prompt folder that already holds a different ``prompt.json`` is refused. ``image0`` /
        ``image1``: the input and edited images (PIL, or uint8 arrays). ``metadata``: JSON-ready
        values recorded with ``"seed"`` on the pair's ``metadata.jsonl`` line. ``extra_images``:
        name → image or bool mask, written as ``{seed}_{name}.png``.
        """
        seed = int(seed)
        if seed < 0:
            raise IP2PError(f"A pair's seed must be 0 or more (got {seed}).")
        folder = self.folder(prompt_index)
        prompt = check_prompt(prompt)
        extras = {}
        for name, value in (extra_images or {}).items():
            if not EXTRA_NAME.match(name) or name in ("0", "1"):
                raise IP2PError(f"Extra image name {name!r} is not usable in a file name; use letters, digits, _ or -.")
            extras[name] = as_image(value, name)
        record = {"seed": seed, **{k: v for k, v in (metadata or {}).items() if k != "seed"}}
        line = json.dumps(record, ensure_ascii=False, sort_keys=False)
        pair = (as_image(image0, "image0"), as_image(image1, "image1"))

        self._write_prompt(folder, prompt)
        metadata_path = folder / "metadata.jsonl"
        if any(s == seed for s, _ in _metadata_lines(metadata_path)):
            self._update_metadata(metadata_path, seed, None)  # unfinished while its files are replaced
        for side, image in enumerate(pair):
            _save(image, folder / f"{seed}_{side}.{self.image_format}", IMAGE_FORMATS[self.image_format])
        for name, image in extras.items():
            _save(image, folder / f"{seed}_{name}.png", "PNG")
        self._update_metadata(metadata_path, seed, line)  # last: the line that marks the pair finished
        return folder

    def _update_metadata(self, path: Path, seed: int, line: str | None) -> None:
        """Rewrite ``metadata.jsonl`` (atomically, under the writer lock) with ``seed``'s line replaced or removed."""
        with exclusive(self.root / WRITER_LOCK):
            lines = [text for s, text in _metadata_lines(path) if s != seed]
            lines += [line] if line is not None else []
            write_text_file(path, "".join(text + "\n" for text in lines))

    def _write_prompt(self, folder: Path, prompt: dict) -> None:
        if self._known_prompts.get(folder.name) == prompt:
            return
        path = folder / "prompt.json"
        with exclusive(self.root / WRITER_LOCK):  # check and write as one step: the first prompt owns the folder
            if path.is_file():
                try:
                    existing = json.loads(path.read_text(encoding="utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    existing = None
                if existing != prompt:
                    raise IP2PError(
                        f"{path} already holds another prompt ({existing!r}, not {prompt!r}). Each prompt needs its "
                        f"own index; to rewrite this dataset, write into an empty folder."
                    )
            else:
                write_text_file(path, json.dumps(prompt, ensure_ascii=False, indent=1) + "\n")
        self._known_prompts[folder.name] = prompt

    def finish(self) -> list[list]:
        """Write ``seeds.json`` listing every finished pair under ``root``; return its entries."""
        with exclusive(self.root / SEEDS_LOCK):  # one scan-and-write at a time: the last one sees every pair
            entries = _finished_pairs(self.root)
            write_text_file(self.root / "seeds.json", json.dumps(entries) + "\n")
        return entries


def _finished_pairs(root: Path) -> list[list]:
    """``[[folder, [seed, ...]], ...]``: the pairs with a ``metadata.jsonl`` line and both images."""
    entries: list[list] = []
    with os.scandir(root) as found:
        folders = sorted(e.name for e in found if e.is_dir() and not e.name.startswith("."))
    for name in folders:
        folder = root / name
        if not (folder / "prompt.json").is_file():
            continue
        names = set(os.listdir(folder))
        seeds = sorted(
            {
                seed
                for seed, _ in _metadata_lines(folder / "metadata.jsonl")
                if seed is not None
                and all(any(f"{seed}_{side}{ext}" in names for ext in PAIR_EXTENSIONS) for side in (0, 1))
            }
        )
        if seeds:
            entries.append([name, seeds])
    return entries

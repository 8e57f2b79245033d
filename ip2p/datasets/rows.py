"""What every dataset layout shares: the dataset sequence, bad-row reasons and their count, image
decoding and pair checks, and the column roles of tabular layouts. The layout readers
(:mod:`.paper_reader`, :mod:`.parquet`) build on it; :mod:`.reader` picks one.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import IP2PError
from ..images import to_rgb_array
from . import EditExample

logger = logging.getLogger(__name__)

# Why a row was skipped: the keys of ``EditDataset.skipped`` and ``BadExampleError.reason``.
MISSING_PROMPT = "missing prompt.json"
BAD_PROMPT = "bad prompt.json"  # not JSON, or not a JSON object
EMPTY_INSTRUCTION = "empty instruction"
MISSING_IMAGE = "missing image"
CORRUPT_IMAGE = "corrupt image"
SIZE_MISMATCH = "size mismatch"
REASONS = (MISSING_PROMPT, BAD_PROMPT, EMPTY_INSTRUCTION, MISSING_IMAGE, CORRUPT_IMAGE, SIZE_MISMATCH)

# The column roles of the Hugging Face layout (diffusers' train_instruct_pix2pix.py defaults).
DEFAULT_COLUMNS: dict[str, str] = {
    "input_image": "input_image",
    "edit_prompt": "edit_prompt",
    "edited_image": "edited_image",
}

LAYOUTS_HELP = (
    "the paper's folder layout (NNNNNNN/prompt.json with {seed}_0/{seed}_1 images, optional seeds.json), "
    "a .parquet file or a folder of .parquet shards (MagicBrush's schema too), or a `datasets` save_to_disk folder "
    "(dataset_info.json, state.json, *.arrow)"
)


class BadExampleError(IP2PError):
    """One example that cannot be used; the dataset stays usable. ``reason`` is one of :data:`REASONS`."""

    def __init__(self, key: str, reason: str, detail: str) -> None:
        super().__init__(f"Example {key} is unusable ({reason}): {detail}. It should be skipped.")
        self.key = key
        self.reason = reason


class SkipCounter:
    """Rows skipped at open time: counts by reason and the first few keys, for one summary line."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: list[str] = []

    def add(self, reason: str, key: str, count: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count
        if len(self.examples) < 3:
            self.examples.append(key)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        parts = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.counts.items()))
        return f"{parts} (e.g. {', '.join(self.examples)})"

    def report(self, path: Path, kept: int, unit: str) -> None:
        if self.counts:
            logger.warning("Skipped %d of %d %s in %s: %s", self.total, self.total + kept, unit, path, self.summary())


class EditDataset(Sequence):
    """A read-only sequence of :class:`EditExample`; images are decoded only when an item is read.

    Attributes: ``path`` (what was opened), ``layout`` (``"paper"``, ``"parquet"``, ``"arrow"`` or
    ``"magicbrush"``), ``skipped`` (rows left out at open time, by reason), ``turns`` (where the
    examples are the turns of one image's edits, as MagicBrush's: each example's (image id, turn
    index), else None). ``dataset[i]`` may raise :class:`BadExampleError` for damage found only on
    decoding.
    """

    layout: str = ""
    turns: list[tuple[str, int]] | None = None

    def __init__(self, path: Path, skipped: Mapping[str, int]) -> None:
        self.path = path
        self.skipped: dict[str, int] = dict(skipped)

    def __len__(self) -> int:
        raise NotImplementedError

    def _index(self, index: int) -> int:
        if isinstance(index, slice) or not hasattr(index, "__index__"):
            raise TypeError(f"dataset indices are integers, got {type(index).__name__}")
        index = index.__index__()
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(f"index {index} out of range for a dataset of {size} examples")
        return index

    def __getitem__(self, index: int) -> EditExample:  # type: ignore[override]
        return self._load(self._index(index))

    def key(self, index: int) -> str:
        """The stable key of example ``index``, without reading its images."""
        return self._key(self._index(index))

    def _key(self, index: int) -> str:
        raise NotImplementedError

    def _load(self, index: int) -> EditExample:
        raise NotImplementedError

    def __repr__(self) -> str:
        skipped = f", skipped={self.skipped}" if self.skipped else ""
        return f"{type(self).__name__}({str(self.path)!r}, layout={self.layout!r}, len={len(self)}{skipped})"


# ----------------------------------------------------------------------------------------- images


def _open_source(source: str | os.PathLike | bytes) -> Image.Image:
    if isinstance(source, bytes | bytearray | memoryview):
        return Image.open(io.BytesIO(bytes(source)))
    return Image.open(source)


def header_size(source: str | os.PathLike | bytes, key: str) -> tuple[int, int]:
    """(width, height) as the image will be loaded (EXIF rotation applied), from the header only.

    Raises :class:`BadExampleError` (``corrupt image``; ``missing image`` for a file that is gone).
    """
    try:
        with _open_source(source) as image:
            width, height = image.size
            orientation = _orientation(image)
    except FileNotFoundError as exc:
        raise BadExampleError(key, MISSING_IMAGE, f"{source} does not exist") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadExampleError(key, CORRUPT_IMAGE, _describe(source, exc)) from exc
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, without decoding pixels (Pillow's PNG ``getexif`` loads the whole image)."""
    if image.format == "PNG":
        raw = image.info.get("exif")  # an eXIf chunk before the pixel data; one after it is not looked for
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return exif.get(0x0112, 1)
    return image.getexif().get(0x0112, 1)


def decode_image(source: str | os.PathLike | bytes, key: str, *, rgb: bool = True) -> Image.Image:
    """The decoded image, upright; RGB when ``rgb`` (transparency composited on white, 16-bit scaled).

    Raises :class:`BadExampleError` for a file that is gone or does not decode.
    """
    try:
        with _open_source(source) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            if not rgb:
                return upright
    except FileNotFoundError as exc:
        raise BadExampleError(key, MISSING_IMAGE, f"{source} does not exist") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadExampleError(key, CORRUPT_IMAGE, _describe(source, exc)) from exc
    if upright.mode == "RGB":
        return upright
    return Image.fromarray((to_rgb_array(upright) * 255.0).round().astype("uint8"), mode="RGB")


def checked_pair(
    input_source: str | os.PathLike | bytes, edited_source: str | os.PathLike | bytes, key: str
) -> tuple[Image.Image, Image.Image]:
    """Both images decoded to RGB; :class:`BadExampleError` if either fails or their sizes differ."""
    input_image = decode_image(input_source, key)
    edited_image = decode_image(edited_source, key)
    if input_image.size != edited_image.size:
        raise BadExampleError(
            key, SIZE_MISMATCH, f"input image is {input_image.size}, edited image is {edited_image.size}"
        )
    return input_image, edited_image


def check_pair_headers(
    input_source: str | os.PathLike | bytes, edited_source: str | os.PathLike | bytes, key: str
) -> None:
    """The cheap open-time check: both headers readable and the sizes equal (no pixel decoded)."""
    input_size = header_size(input_source, key)
    edited_size = header_size(edited_source, key)
    if input_size != edited_size:
        raise BadExampleError(key, SIZE_MISMATCH, f"input image is {input_size}, edited image is {edited_size}")


def _describe(source: str | os.PathLike | bytes, exc: BaseException) -> str:
    what = f"{len(source)} bytes" if isinstance(source, bytes | bytearray | memoryview) else str(source)
    return f"{what} could not be decoded ({exc})"


def resolve_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    """The full role → column mapping: the defaults, overridden by ``columns``."""
    mapping = dict(DEFAULT_COLUMNS)
    for role, name in (columns or {}).items():
        if role not in DEFAULT_COLUMNS:
            raise IP2PError(
                f"Unknown column role {role!r} in the column mapping; the roles are "
                f"{', '.join(DEFAULT_COLUMNS)} (e.g. data.columns.edit_prompt=instruction)."
            )
        if not isinstance(name, str) or not name:
            raise IP2PError(f"Column name for {role!r} must be a non-empty string, got {name!r}.")
        mapping[role] = name
    return mapping

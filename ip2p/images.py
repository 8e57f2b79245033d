"""Image files in and out: any common image as an RGB float tensor, PNGs written atomically.

Inputs come in every mode Pillow knows; the editor wants (1, 3, H, W) floats in [0, 1]. Each
mode is converted on purpose: transparency is composited on white (what a viewer shows), 16-bit
data is scaled by its own range (Pillow's ``convert("L")`` would clip it), palettes and CMYK go
through Pillow's RGB conversion, and the EXIF orientation is applied so the edit is upright.
Outputs are PNGs carrying the edit's settings: one ``ip2p`` JSON text chunk for programs and a
``parameters`` text for people, written to a temporary file and renamed so no reader (and no
crash) ever sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import struct
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .errors import IP2PError
from .formats.atomic import atomic_file
from .sizing import DEFAULT_MAX_INPUT_SIDE, check_input_size

METADATA_KEY = "ip2p"  # PNG text chunk holding the settings as JSON
PARAMETERS_KEY = "parameters"  # PNG text chunk in the human-readable form image viewers show
WHITE = 255.0

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


# What Pillow raises on a damaged or hostile file beyond "not an image": truncated data (OSError,
# EOFError), broken headers (SyntaxError, struct.error, IndexError), oversized text chunks
# (ValueError "Decompressed Data Too Large"), and decompression bombs (error, or warning when made one).
_DECODE_ERRORS = (OSError, EOFError, SyntaxError, ValueError, struct.error, IndexError)


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` (followed through links) is a plain file: a FIFO or device would block or never end."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _check_regular(path: Path) -> None:
    if not path.exists():
        raise IP2PError(f"Image not found: {path}. Check the path.")
    if path.is_dir():
        raise IP2PError(f"{path} is a folder, expected an image file.")
    if not is_regular_file(path):
        raise IP2PError(
            f"{path} is not a regular file (a FIFO, socket or device), so it cannot be read as an image. "
            f"Give an image file."
        )


def _pil_error(path: Path, exc: BaseException) -> IP2PError:
    """One line naming ``path`` for anything Pillow raised while opening or decoding it."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return IP2PError(f"{path} is too large to decode safely ({exc}). Downscale it first.")
    if isinstance(exc, UnidentifiedImageError):
        return IP2PError(f"{path} is not an image Pillow can read. Give a PNG, JPEG, WebP, TIFF or BMP file.")
    if isinstance(exc, ValueError) and "too large" in str(exc).lower():
        return IP2PError(
            f"{path} carries a text chunk (iTXt/zTXt metadata) larger than Pillow reads safely ({exc}). "
            f"Re-save the image without its metadata."
        )
    if isinstance(exc, PermissionError):
        return IP2PError(f"{path} could not be opened ({exc.strerror}). Check the file's permissions.")
    return IP2PError(
        f"{path} could not be decoded ({type(exc).__name__}: {exc}); the file is truncated or corrupt. "
        f"Re-export or replace it."
    )


@contextlib.contextmanager
def _pillow_errors(path: Path) -> Iterator[None]:
    """Turn Pillow's errors (and its decompression-bomb warning) into one-line errors naming ``path``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except IP2PError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, *_DECODE_ERRORS) as exc:
        raise _pil_error(path, exc) from exc


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[Image.Image]:
    """The image at ``path``, opened lazily; every Pillow error inside the block names the file."""
    path = Path(path)
    _check_regular(path)
    with _pillow_errors(path), Image.open(path) as image:
        yield image


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file Pillow recognises as an image (reads the header only).

    A file Pillow recognises but cannot read safely (a decompression bomb, an oversized text
    chunk, a broken header) still counts as an image: :func:`load_image` then refuses it naming
    the problem, so a damaged image in a folder stops the run instead of being skipped silently.
    """
    if not is_regular_file(path):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path):
                return True
    except UnidentifiedImageError:
        return False
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, *_DECODE_ERRORS):
        return True


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as the image will be loaded, read from the header (EXIF rotation applied)."""
    with _open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """An (H, W, 3) float32 array in [0, 1] from a Pillow image of any mode."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        # 16-bit greyscale (PNG, TIFF); Pillow opens some 16-bit files as 32-bit "I" holding 0…65535.
        grey = np.asarray(image, dtype=np.float64) / 65535.0
        return np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    if mode == "F":
        grey = np.asarray(image, dtype=np.float64)
        peak = grey.max(initial=0.0)
        scale = 1.0 if peak <= 1.0 else (255.0 if peak <= 255.0 else 65535.0)
        return np.repeat(np.clip(grey / scale, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA" if ("transparency" in image.info or mode == "PA") else "RGB")
    elif mode == "LA":
        image = image.convert("RGBA")
    elif mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX, RGBa …
    pixels = np.asarray(image, dtype=np.float32)
    if image.mode == "RGBA":
        alpha = pixels[..., 3:4] / 255.0
        pixels = pixels[..., :3] * alpha + WHITE * (1.0 - alpha)
    return np.clip(pixels[..., :3] / 255.0, 0.0, 1.0)


def load_image(path: str | os.PathLike, *, max_input_side: int = DEFAULT_MAX_INPUT_SIDE) -> torch.Tensor:
    """A (1, 3, H, W) float32 tensor in [0, 1] from an image file, upright and RGB.

    Sizes are checked from the header before any pixel is decoded; float images holding NaN or
    infinity are refused (clipping would hide them).
    """
    with _open(path) as image:
        check_input_size(*image.size, max_input_side=max_input_side)
        image.load()
        upright = ImageOps.exif_transpose(image)
        if upright.mode == "F" and not np.isfinite(np.asarray(upright, dtype=np.float32)).all():
            raise IP2PError(
                f"{path} is a floating-point image with NaN or infinite pixels. Replace them with finite values "
                f"(or export it as 8/16-bit) first."
            )
        array = to_rgb_array(upright)
    if not np.isfinite(array).all():
        raise IP2PError(f"{path} decoded to NaN or infinite pixel values. Re-export it as an 8/16-bit image.")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8 from a (3, H, W) or (1, 3, H, W) float tensor in [0, 1], rounded as diffusers does."""
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"one image at a time, got a batch of {image.shape[0]}")
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return array.permute(1, 2, 0).cpu().numpy()


def parameters_text(metadata: Mapping[str, object]) -> str:
    """The human-readable summary: the instruction on the first line, then ``Key: value`` pairs."""
    lines = [str(metadata.get("instruction", ""))]
    if metadata.get("negative"):
        lines.append(f"Negative: {metadata['negative']}")
    rest = {k: v for k, v in metadata.items() if k not in ("instruction", "negative")}
    lines.append(", ".join(f"{k.replace('_', ' ').capitalize()}: {v}" for k, v in rest.items()))
    return "\n".join(lines)


def save_png(image: torch.Tensor, path: str | os.PathLike, metadata: Mapping[str, object]) -> Path:
    """Write ``image`` as a PNG with the ``ip2p`` and ``parameters`` text chunks, atomically."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(dict(metadata), ensure_ascii=False, sort_keys=True))
    info.add_text(PARAMETERS_KEY, parameters_text(metadata))
    pil = Image.fromarray(to_uint8(image))
    with atomic_file(path) as temporary, open(temporary, "wb") as stream:
        pil.save(stream, format="PNG", pnginfo=info)
        stream.flush()
        os.fsync(stream.fileno())
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``ip2p`` settings stored in a PNG written by :func:`save_png` (``{}`` if none)."""
    with _open(path) as image:
        text = image.text.get(METADATA_KEY) if hasattr(image, "text") else None
    if not text:
        return {}
    try:
        metadata = json.loads(text)
    except ValueError as exc:
        raise IP2PError(f"{path} has an {METADATA_KEY!r} text chunk that is not valid JSON ({exc}).") from exc
    if not isinstance(metadata, dict):
        raise IP2PError(f"{path} has an {METADATA_KEY!r} text chunk that is not a JSON object.")
    return metadata

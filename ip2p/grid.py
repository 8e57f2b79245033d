"""Guidance sweeps: parse lists of scales and lay the results out as a labelled grid."""

from __future__ import annotations

import re

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import IP2PError
from .guidance import check_scale

LABEL_HEIGHT = 24  # px of the header row
LABEL_WIDTH = 96  # px of the label column
MAX_SWEEP_VALUES = 16


def parse_scales(text: str, name: str) -> list[float]:
    """ "5, 7.5 10" → [5.0, 7.5, 10.0]; every value checked like a single scale."""
    parts = [p for p in re.split(r"[,\s;]+", text.strip()) if p]
    if not parts:
        raise IP2PError(f"{name} is empty; give one or more numbers separated by commas, e.g. '5, 7.5, 10'.")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise IP2PError(f"{name} has {part!r}, which is not a number; write values like '5, 7.5, 10'.") from None
        values.append(check_scale(name, value))
    if len(values) > MAX_SWEEP_VALUES:
        raise IP2PError(f"{name} has {len(values)} values; a sweep takes at most {MAX_SWEEP_VALUES} per axis.")
    return values


def _label(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str) -> None:
    font = ImageFont.load_default()
    left, top, right, bottom = box
    text_box = draw.textbbox((0, 0), text, font=font)
    x = left + max(2, (right - left - (text_box[2] - text_box[0])) // 2)
    y = top + max(2, (bottom - top - (text_box[3] - text_box[1])) // 2)
    draw.text((x, y), text, fill=(0, 0, 0), font=font)


def labelled_grid(
    cells: torch.Tensor, rows: list[str], cols: list[str], label_width: int = LABEL_WIDTH
) -> torch.Tensor:
    """Cells (len(rows)·len(cols), H, W, C) in [0, 1], row-major → one (H', W', 3) grid with labels."""
    count, height, width, _ = cells.shape
    if count != len(rows) * len(cols):
        raise ValueError(f"{count} cells for a {len(rows)}×{len(cols)} grid")
    canvas = Image.new("RGB", (label_width + width * len(cols), LABEL_HEIGHT + height * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    pixels = (cells[..., :3].detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    for index in range(count):
        row, col = divmod(index, len(cols))
        canvas.paste(Image.fromarray(pixels[index]), (label_width + col * width, LABEL_HEIGHT + row * height))
    for col, text in enumerate(cols):
        _label(draw, (label_width + col * width, 0, label_width + (col + 1) * width, LABEL_HEIGHT), text)
    for row, text in enumerate(rows):
        _label(draw, (0, LABEL_HEIGHT + row * height, label_width, LABEL_HEIGHT + (row + 1) * height), text)
    return torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0)

"""Guidance sweeps and validation grids: parse lists of scales and lay results out as a labelled grid."""

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


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` px where a space allows (explicit newlines kept)."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _label(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str) -> None:
    """``text`` centred in ``box``, wrapped to its width; lines past its height are cut, the last ending in "..."."""
    font = ImageFont.load_default()
    left, top, right, bottom = box
    lines = _wrap(draw, text, font, right - left - 4)
    line_height = draw.textbbox((0, 0), "A", font=font)[3] + 4  # Pillow's multiline spacing: 4 px
    fits = max(1, (bottom - top - 4) // line_height)
    if len(lines) > fits:
        lines = lines[: fits - 1] + [lines[fits - 1] + "..."]
    text = "\n".join(lines)
    text_box = draw.multiline_textbbox((0, 0), text, font=font, align="center")
    x = left + max(2, (right - left - (text_box[2] - text_box[0])) // 2)
    y = top + max(2, (bottom - top - (text_box[3] - text_box[1])) // 2)
    draw.multiline_text((x, y), text, fill=(0, 0, 0), font=font, align="center")


def labelled_grid(
    cells: torch.Tensor,
    rows: list[str],
    cols: list[str],
    label_width: int = LABEL_WIDTH,
    label_height: int = LABEL_HEIGHT,
) -> torch.Tensor:
    """Cells (len(rows)·len(cols), H, W, C) in [0, 1], row-major → one (H', W', 3) grid with labels.

    The header row is ``label_height`` px high and the label column ``label_width`` px wide; labels
    wrap at spaces (and at newlines) to fit their box.
    """
    count, height, width, _ = cells.shape
    if count != len(rows) * len(cols):
        raise ValueError(f"{count} cells for a {len(rows)}×{len(cols)} grid")
    canvas = Image.new("RGB", (label_width + width * len(cols), label_height + height * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    pixels = (cells[..., :3].detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    for index in range(count):
        row, col = divmod(index, len(cols))
        canvas.paste(Image.fromarray(pixels[index]), (label_width + col * width, label_height + row * height))
    for col, text in enumerate(cols):
        _label(draw, (label_width + col * width, 0, label_width + (col + 1) * width, label_height), text)
    for row, text in enumerate(rows):
        _label(draw, (0, label_height + row * height, label_width, label_height + (row + 1) * height), text)
    return torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0)

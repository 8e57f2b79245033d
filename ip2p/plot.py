"""The paper's guidance trade-off plot: CLIP directional similarity against CLIP image similarity.

Brooks et al. (2023) judge an image_cfg sweep by two numbers per setting: how far the edit follows
the instruction (directional similarity, y) and how much of the input it keeps (image similarity,
x). One line per text_cfg, its points in image_cfg order, each labelled with its image_cfg. Drawn
with Pillow alone, so the core needs no matplotlib.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

from PIL import Image, ImageDraw, ImageFont

from .errors import IP2PError

MIN_SIZE = (320, 240)  # px (width, height): below this the labels no longer fit beside the frame
X_TITLE = "CLIP image similarity"
Y_TITLE = "CLIP directional similarity"
DEFAULT_TITLE = "Guidance trade-off: image_cfg sweep"
# Series colours in text_cfg order (matplotlib's tab10 without its grey, which would read as a grid line).
SERIES_COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
)
TEXT_COLOUR = (30, 30, 30)
FRAME_COLOUR = (90, 90, 90)
GRID_COLOUR = (228, 228, 228)
FONT_SIZE = 12  # px, tick labels, legend and point labels
TITLE_FONT_SIZE = 15  # px
MARKER_RADIUS = 4  # px
LINE_WIDTH = 2  # px
TICK_LENGTH = 4  # px
DATA_PADDING = 0.08  # share of the data range left empty at each end, so no point sits on the frame
LEGEND_SWATCH = 22  # px of line sample before each legend entry
LEGEND_NOTE = "labels: image_cfg"  # under the legend: what the number beside each point is
DEGENERATE_HALF_SPAN = 0.05  # half the axis range around a single value (times the value when above 1)


@dataclass(frozen=True)
class TradeoffPoint:
    """One guidance setting of a sweep and its two CLIP scores, each a mean over the examples."""

    image_cfg: float
    text_cfg: float
    directional: float  # CLIP directional similarity: how far the edit follows the instruction
    image_similarity: float  # CLIP image-image similarity of input and edit: how much of the input is kept


@dataclass(frozen=True)
class Axis:
    """A value range wide enough that the data stay off its ends, and the round ticks inside it."""

    low: float
    high: float
    ticks: tuple[float, ...]
    decimals: int  # digits after the point that every tick needs (0.025 steps need 3)

    def label(self, value: float) -> str:
        return f"{value:.{self.decimals}f}"


@dataclass(frozen=True)
class PlotArea:
    """Where the data go: the frame's pixel box and the value range of each axis."""

    left: int
    top: int
    right: int
    bottom: int
    x_axis: Axis
    y_axis: Axis

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """Data (image similarity, directional similarity) → pixel (column, row); higher y is a smaller row."""
        fx = (x - self.x_axis.low) / (self.x_axis.high - self.x_axis.low)
        fy = (y - self.y_axis.low) / (self.y_axis.high - self.y_axis.low)
        return self.left + fx * (self.right - self.left), self.bottom - fy * (self.bottom - self.top)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (the bitmap font, size ignored, where FreeType or Pillow ≥ 10.1 is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0: no size argument
        return ImageFont.load_default()


def _check(points: Sequence[TradeoffPoint], size: tuple[int, int]) -> None:
    if not points:
        raise IP2PError(
            "The trade-off plot got no points; give one TradeoffPoint per (text_cfg, image_cfg) setting of the sweep."
        )
    for index, point in enumerate(points):
        for field in fields(TradeoffPoint):
            value = getattr(point, field.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise IP2PError(
                    f"Trade-off point {index} has {field.name}={value!r}; every value must be a finite number. "
                    "Drop the sweep settings whose scores came out NaN or infinite, or score them again."
                )
    seen = set()
    for point in points:
        key = (point.text_cfg, point.image_cfg)
        if key in seen:
            raise IP2PError(
                f"The trade-off plot got two points for text_cfg {_scale_text(point.text_cfg)}, "
                f"image_cfg {_scale_text(point.image_cfg)}; "
                "give one point per setting (average repeated runs first)."
            )
        seen.add(key)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(side, int) for side in size)
        or size[0] < MIN_SIZE[0]
        or size[1] < MIN_SIZE[1]
    ):
        raise IP2PError(
            f"The trade-off plot size {size!r} is too small or not two whole numbers; "
            f"give (width, height) of at least {MIN_SIZE[0]}×{MIN_SIZE[1]} px, e.g. (768, 512)."
        )


def _nice_axis(values: Sequence[float], target_ticks: int) -> Axis:
    """The range of ``values`` padded at both ends, with about ``target_ticks`` round ticks (1, 2, 2.5, 5 × 10^k) inside."""
    low, high = min(values), max(values)
    if high - low <= 1e-9 * max(1.0, abs(low), abs(high)):  # one point, or all equal: centre it
        half = DEGENERATE_HALF_SPAN * max(1.0, abs(low))
        low, high = low - half, high + half
    padding = DATA_PADDING * (high - low)
    low, high = low - padding, high + padding
    raw_step = (high - low) / max(1, target_ticks)
    exponent = math.floor(math.log10(raw_step))
    steps = sorted(m * 10.0**e for e in range(exponent - 1, exponent + 2) for m in (1, 2, 2.5, 5))
    index = next(i for i, step in enumerate(steps) if step >= raw_step * (1 - 1e-9))
    while True:  # at most one or two rounds: a finer step until two ticks fall inside
        step = steps[index]
        first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
        if last - first >= 1 or index == 0:
            break
        index -= 1
    decimals = 0
    while abs(round(step, decimals) - step) > step * 1e-6 and decimals < 12:
        decimals += 1
    ticks = tuple(round(k * step, decimals) + 0.0 for k in range(first, last + 1))  # + 0.0: no "-0.00"
    return Axis(low=low, high=high, ticks=ticks, decimals=decimals)


def _series(points: Sequence[TradeoffPoint]) -> dict[float, list[TradeoffPoint]]:
    """text_cfg → its points in image_cfg order, text_cfg ascending."""
    series: dict[float, list[TradeoffPoint]] = {}
    for point in sorted(points, key=lambda p: (p.text_cfg, p.image_cfg)):
        series.setdefault(point.text_cfg, []).append(point)
    return series


def _series_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct colours: the palette, or evenly spaced hues when a sweep has more series than it."""
    if count <= len(SERIES_COLOURS):
        return list(SERIES_COLOURS[:count])
    hues = (index / count for index in range(count))
    return [tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.8, 0.8)) for hue in hues]


def _scale_text(value: float) -> str:
    """1 → "1.0", 1.25 → "1.25": a guidance scale as users type it."""
    text = f"{value:g}"
    return text if any(c in text for c in ".e") else f"{text}.0"


def _legend_entry(text_cfg: float) -> str:
    return f"text_cfg {_scale_text(text_cfg)}"


def _line_height(font) -> int:
    return font.getbbox("Ag")[3] + 4


def plot_area(
    points: Sequence[TradeoffPoint], size: tuple[int, int] = (768, 512), title: str = DEFAULT_TITLE
) -> PlotArea:
    """The frame and axes :func:`tradeoff_plot` draws ``points`` in; public so the geometry can be checked."""
    _check(points, size)
    width, height = size
    font, title_font = _font(FONT_SIZE), _font(TITLE_FONT_SIZE)
    line = _line_height(font)
    top = (_line_height(title_font) + 14) if title else 14
    bottom = height - (TICK_LENGTH + 4 + line + 6 + line + 8)  # ticks, tick labels, x title
    y_axis = _nice_axis([p.directional for p in points], target_ticks=max(3, min(8, (bottom - top) // 60)))
    y_label_width = max(font.getlength(y_axis.label(tick)) for tick in y_axis.ticks)
    left = math.ceil(10 + line + 8 + y_label_width + 4 + TICK_LENGTH)  # y title (turned), tick labels, ticks
    legend_texts = [_legend_entry(t) for t in _series(points)] + [LEGEND_NOTE]
    legend_width = LEGEND_SWATCH + 6 + max(font.getlength(text) for text in legend_texts)
    right = math.floor(width - 12 - legend_width - 16)
    x_axis = _nice_axis([p.image_similarity for p in points], target_ticks=max(3, min(8, (right - left) // 90)))
    return PlotArea(left=left, top=top, right=right, bottom=bottom, x_axis=x_axis, y_axis=y_axis)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, align: str = "la", fill=TEXT_COLOUR):
    """``text`` placed by its ink box: ``align`` is horizontal l/m/r then vertical t/m/b (bitmap fonts take no anchor)."""
    box = draw.textbbox((0, 0), text, font=font)
    ink_width, ink_height = box[2] - box[0], box[3] - box[1]
    x = xy[0] - box[0] - {"l": 0, "m": ink_width / 2, "r": ink_width}[align[0]]
    y = xy[1] - box[1] - {"t": 0, "a": 0, "m": ink_height / 2, "b": ink_height}[align[1]]
    draw.text((round(x), round(y)), text, fill=fill, font=font)


def _turned_text(canvas: Image.Image, centre: tuple[float, float], text: str, font) -> None:
    """``text`` reading bottom to top, centred on ``centre`` (the y-axis title)."""
    box = font.getbbox(text)
    mask = Image.new("L", (box[2] - box[0] + 2, box[3] - box[1] + 2), 0)
    ImageDraw.Draw(mask).text((1 - box[0], 1 - box[1]), text, fill=255, font=font)
    mask = mask.rotate(90, expand=True)
    canvas.paste(TEXT_COLOUR, (round(centre[0] - mask.width / 2), round(centre[1] - mask.height / 2)), mask)


def tradeoff_plot(
    points: Sequence[TradeoffPoint], *, size: tuple[int, int] = (768, 512), title: str = DEFAULT_TITLE
) -> Image.Image:
    """The paper's trade-off figure for ``points`` as an RGB image of ``size`` (width, height) px.

    One line per text_cfg (colours from :data:`SERIES_COLOURS` in text_cfg order), its points joined in
    image_cfg order and labelled with their image_cfg; the legend sits right of the frame.
    """
    area = plot_area(points, size, title)
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    font, title_font = _font(FONT_SIZE), _font(TITLE_FONT_SIZE)
    line = _line_height(font)

    for tick in area.x_axis.ticks:
        column = area.to_pixel(tick, area.y_axis.low)[0]
        draw.line([(column, area.top), (column, area.bottom)], fill=GRID_COLOUR)
        draw.line([(column, area.bottom), (column, area.bottom + TICK_LENGTH)], fill=FRAME_COLOUR)
        _text(draw, (column, area.bottom + TICK_LENGTH + 4), area.x_axis.label(tick), font, "mt")
    for tick in area.y_axis.ticks:
        row = area.to_pixel(area.x_axis.low, tick)[1]
        draw.line([(area.left, row), (area.right, row)], fill=GRID_COLOUR)
        draw.line([(area.left - TICK_LENGTH, row), (area.left, row)], fill=FRAME_COLOUR)
        _text(draw, (area.left - TICK_LENGTH - 4, row), area.y_axis.label(tick), font, "rm")
    draw.rectangle([(area.left, area.top), (area.right, area.bottom)], outline=FRAME_COLOUR)

    _text(draw, ((area.left + area.right) / 2, size[1] - 8), X_TITLE, font, "mb")
    _turned_text(canvas, (10 + line / 2, (area.top + area.bottom) / 2), Y_TITLE, font)
    if title:
        _text(draw, (size[0] / 2, 8), title, title_font, "mt")

    series = _series(points)
    colours = _series_colours(len(series))
    for members, colour in zip(series.values(), colours, strict=True):
        pixels = [area.to_pixel(p.image_similarity, p.directional) for p in members]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=LINE_WIDTH, joint="curve")
    for members, colour in zip(series.values(), colours, strict=True):
        for point in members:
            x, y = area.to_pixel(point.image_similarity, point.directional)
            r = MARKER_RADIUS
            draw.ellipse([(x - r, y - r), (x + r, y + r)], fill=colour, outline="white")
    for members in series.values():
        for point in members:
            _label_point(draw, area, point, font)

    legend_left, row = area.right + 16, area.top + line / 2
    for text_cfg, colour in zip(series, colours, strict=True):
        draw.line([(legend_left, row), (legend_left + LEGEND_SWATCH, row)], fill=colour, width=LINE_WIDTH)
        centre, r = legend_left + LEGEND_SWATCH / 2, MARKER_RADIUS
        draw.ellipse([(centre - r, row - r), (centre + r, row + r)], fill=colour, outline="white")
        _text(draw, (legend_left + LEGEND_SWATCH + 6, row), _legend_entry(text_cfg), font, "lm")
        row += line + 4
    _text(draw, (legend_left, row + 4), LEGEND_NOTE, font, "lm", fill=FRAME_COLOUR)
    return canvas


def _label_point(draw: ImageDraw.ImageDraw, area: PlotArea, point: TradeoffPoint, font) -> None:
    """The image_cfg above right of its marker, or mirrored where that would cross the frame."""
    x, y = area.to_pixel(point.image_similarity, point.directional)
    text = _scale_text(point.image_cfg)
    box = draw.textbbox((0, 0), text, font=font)
    gap = MARKER_RADIUS + 2
    horizontal = "l" if x + gap + (box[2] - box[0]) < area.right - 2 else "r"
    vertical = "b" if y - gap - (box[3] - box[1]) > area.top + 2 else "t"
    anchor_x = x + gap if horizontal == "l" else x - gap
    anchor_y = y - gap if vertical == "b" else y + gap
    _text(draw, (anchor_x, anchor_y), text, font, horizontal + vertical)

"""The guidance trade-off plot: the paper's figure, checked by the pixels it draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ip2p import plot
from ip2p.errors import IP2PError
from ip2p.plot import TradeoffPoint

FIRST, SECOND = plot.SERIES_COLOURS[0], plot.SERIES_COLOURS[1]  # series colours, text_cfg ascending


def _pixels_of(image, colour, box=None) -> np.ndarray:
    """(row, column) of every pixel of exactly ``colour``, optionally only inside ``box`` (left, top, right, bottom)."""
    pixels = np.asarray(image)
    rows, columns = np.nonzero((pixels == np.array(colour, dtype=np.uint8)).all(axis=-1))
    found = np.stack([rows, columns], axis=1)
    if box is not None:
        left, top, right, bottom = box
        inside = (found[:, 0] > top) & (found[:, 0] < bottom) & (found[:, 1] > left) & (found[:, 1] < right)
        found = found[inside]
    return found


def _frame(area: plot.PlotArea) -> tuple[int, int, int, int]:
    return area.left, area.top, area.right, area.bottom


def _marker_centre(points, colour) -> tuple[float, float]:
    """(column, row) centre of the marker drawn in ``colour`` inside the frame (a series of one point has no line)."""
    image, area = plot.tradeoff_plot(points), plot.plot_area(points)
    found = _pixels_of(image, colour, _frame(area))
    assert len(found) > 0, f"no marker of {colour} inside the frame"
    return float(found[:, 1].mean()), float(found[:, 0].mean())


def _sweep(text_cfg: float = 7.5) -> list[TradeoffPoint]:
    """A paper-like sweep: more image_cfg keeps more of the input and follows the instruction less; more
    text_cfg follows it more."""
    scores = {1.0: (0.22, 0.74), 1.5: (0.18, 0.84), 2.0: (0.13, 0.90)}
    lift = 0.005 * text_cfg
    return [TradeoffPoint(cfg, text_cfg, directional + lift, kept) for cfg, (directional, kept) in scores.items()]


def test_the_plot_is_an_rgb_image_of_the_requested_size():
    image = plot.tradeoff_plot(_sweep(), size=(640, 400))
    assert image.mode == "RGB"
    assert image.size == (640, 400)


def test_higher_directional_similarity_is_drawn_higher():
    points = [TradeoffPoint(1.5, 5.0, 0.10, 0.8), TradeoffPoint(1.5, 10.0, 0.20, 0.8)]
    _, low_row = _marker_centre(points, FIRST)
    _, high_row = _marker_centre(points, SECOND)
    assert high_row < low_row


def test_higher_image_similarity_is_drawn_further_right():
    points = [TradeoffPoint(1.5, 5.0, 0.15, 0.9), TradeoffPoint(1.5, 10.0, 0.15, 0.7)]
    right_column, _ = _marker_centre(points, FIRST)
    left_column, _ = _marker_centre(points, SECOND)
    assert right_column > left_column


def test_markers_are_drawn_where_to_pixel_maps_their_scores():
    points = [TradeoffPoint(1.5, 5.0, 0.12, 0.71), TradeoffPoint(1.5, 10.0, 0.21, 0.93)]
    area = plot.plot_area(points)
    for point, colour in zip(points, (FIRST, SECOND), strict=True):
        expected = area.to_pixel(point.image_similarity, point.directional)
        assert _marker_centre(points, colour) == pytest.approx(expected, abs=1.5)


def test_no_point_is_drawn_on_the_frame():
    points = _sweep()
    area = plot.plot_area(points)
    for point in points:
        column, row = area.to_pixel(point.image_similarity, point.directional)
        assert area.left + plot.MARKER_RADIUS < column < area.right - plot.MARKER_RADIUS
        assert area.top + plot.MARKER_RADIUS < row < area.bottom - plot.MARKER_RADIUS


def test_a_series_is_joined_in_image_cfg_order_whatever_order_the_points_come_in():
    a, b, c = (0.20, 0.60), (0.20, 0.90), (0.10, 0.75)  # a triangle: the unjoined side's middle is off the line
    points = [
        TradeoffPoint(2.0, 7.5, *c),
        TradeoffPoint(1.0, 7.5, *a),
        TradeoffPoint(1.5, 7.5, *b),
    ]
    image, area = plot.tradeoff_plot(points), plot.plot_area(points)
    pixels = np.asarray(image)

    def colour_between(first, second) -> tuple[int, ...]:
        x0, y0 = area.to_pixel(first[1], first[0])
        x1, y1 = area.to_pixel(second[1], second[0])
        return tuple(pixels[round((y0 + y1) / 2), round((x0 + x1) / 2)])

    assert colour_between(a, b) == FIRST  # image_cfg 1.0 → 1.5
    assert colour_between(b, c) == FIRST  # image_cfg 1.5 → 2.0
    assert colour_between(a, c) != FIRST  # 1.0 and 2.0 are not neighbours


def test_each_text_cfg_series_has_its_own_colour_in_the_frame_and_the_legend():
    points = _sweep(5.0) + _sweep(10.0)
    image, area = plot.tradeoff_plot(points), plot.plot_area(points)
    assert FIRST != SECOND
    for colour in (FIRST, SECOND):
        assert len(_pixels_of(image, colour, _frame(area))) > 0, "series line"
        assert len(_pixels_of(image, colour, (area.right, 0, image.width, image.height))) > 0, "legend entry"


def test_more_series_than_the_palette_still_get_distinct_colours():
    count = len(plot.SERIES_COLOURS) + 3
    points = [TradeoffPoint(1.5, float(text_cfg), 0.1 + 0.01 * text_cfg, 0.8) for text_cfg in range(count)]
    image, area = plot.tradeoff_plot(points), plot.plot_area(points)
    left, top, right, bottom = _frame(area)
    frame = np.asarray(image)[top + 1 : bottom, left + 1 : right].reshape(-1, 3).astype(int)
    saturated = frame[(frame.max(axis=1) - frame.min(axis=1)) > 40]  # text and grid are grey
    _, counts = np.unique(saturated, axis=0, return_counts=True)
    assert (counts >= 20).sum() == count  # one filled marker each


def test_axis_titles_and_tick_labels_are_drawn_outside_the_frame():
    image, area = plot.tradeoff_plot(_sweep()), plot.plot_area(_sweep())
    dark = np.asarray(image).max(axis=-1) < 128
    assert dark[area.bottom + plot.TICK_LENGTH + 1 :, area.left : area.right].any(), "x ticks and title"
    assert dark[area.top : area.bottom, : area.left - plot.TICK_LENGTH - 1].any(), "y ticks and title"


def test_ticks_are_round_numbers_inside_an_axis_that_encloses_the_data_with_a_margin():
    points = _sweep()
    area = plot.plot_area(points)
    for axis, values in (
        (area.x_axis, [p.image_similarity for p in points]),
        (area.y_axis, [p.directional for p in points]),
    ):
        assert axis.low < min(values) and max(values) < axis.high
        assert len(axis.ticks) >= 2
        assert all(axis.low <= tick <= axis.high for tick in axis.ticks)
        step = axis.ticks[1] - axis.ticks[0]
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert any(mantissa == pytest.approx(m) for m in (1, 2, 2.5, 5))
        assert all(float(axis.label(tick)) == pytest.approx(tick) for tick in axis.ticks)


@pytest.mark.parametrize(
    "points",
    [
        [TradeoffPoint(1.5, 7.5, 0.18, 0.85)],
        [TradeoffPoint(cfg, 7.5, 0.18, 0.85) for cfg in (1.0, 1.5, 2.0)],
        [TradeoffPoint(1.5, 7.5, 0.0, 0.0)],
    ],
    ids=["one point", "equal values", "zeros"],
)
def test_a_degenerate_range_still_gives_an_axis_around_the_value(points):
    area = plot.plot_area(points)
    for axis, value in ((area.x_axis, points[0].image_similarity), (area.y_axis, points[0].directional)):
        assert axis.low < value < axis.high
        assert len(axis.ticks) >= 2
    assert plot.tradeoff_plot(points).size == (768, 512)


def test_scales_are_labelled_as_users_write_them():
    assert [plot._scale_text(v) for v in (1, 1.5, 1.25, 10)] == ["1.0", "1.5", "1.25", "10.0"]
    assert plot._legend_entry(7.5) == "text_cfg 7.5"


def test_no_points_is_an_error_that_says_what_to_give():
    with pytest.raises(IP2PError, match="no points.*TradeoffPoint"):
        plot.tradeoff_plot([])


@pytest.mark.parametrize("field", ["image_cfg", "text_cfg", "directional", "image_similarity"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_value_is_an_error_naming_the_field(field, bad):
    values = {"image_cfg": 1.5, "text_cfg": 7.5, "directional": 0.2, "image_similarity": 0.8, field: bad}
    with pytest.raises(IP2PError, match=f"{field}=.*finite"):
        plot.tradeoff_plot([TradeoffPoint(**values)])


@pytest.mark.parametrize("size", [(319, 512), (768, 239), (0, 0), (768.0, 512)])
def test_a_size_below_the_minimum_is_an_error_giving_the_minimum(size):
    with pytest.raises(IP2PError, match="at least 320×240"):
        plot.tradeoff_plot(_sweep(), size=size)


def test_the_minimum_size_is_accepted():
    assert plot.tradeoff_plot(_sweep(), size=plot.MIN_SIZE).size == plot.MIN_SIZE


def test_two_points_for_one_setting_is_an_error_asking_for_one():
    points = [TradeoffPoint(1.5, 7.5, 0.2, 0.8), TradeoffPoint(1.5, 7.5, 0.3, 0.7)]
    with pytest.raises(IP2PError, match="two points for text_cfg 7.5, image_cfg 1.5.*one point per setting"):
        plot.tradeoff_plot(points)

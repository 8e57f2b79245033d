"""Guidance-sweep helpers: scale lists and the labelled grid."""

from __future__ import annotations

import pytest
import torch

from ip2p import grid
from ip2p.errors import IP2PError


def test_scale_lists_accept_commas_and_spaces():
    assert grid.parse_scales("5, 7.5 10", "text_cfg_values") == [5.0, 7.5, 10.0]


@pytest.mark.parametrize("text", ["", "  ", "5, x", "1, -2", "nan"])
def test_bad_scale_lists_name_the_input(text):
    with pytest.raises(IP2PError, match="image_cfg_values"):
        grid.parse_scales(text, "image_cfg_values")


def test_grid_places_each_cell_in_row_major_order_below_the_labels():
    cells = torch.stack([torch.full((16, 16, 3), v) for v in (0.0, 0.25, 0.5, 0.75, 1.0, 0.125)])
    out = grid.labelled_grid(cells, ["a", "b"], ["x", "y", "z"], label_width=40)
    assert out.shape == (grid.LABEL_HEIGHT + 32, 40 + 48, 3)
    cell = out[grid.LABEL_HEIGHT + 16 + 8, 40 + 16 + 8]  # row 1, column 1
    assert cell.tolist() == pytest.approx([1.0] * 3, abs=1 / 255)


def test_grid_labels_are_drawn():
    cells = torch.ones(1, 16, 16, 3)
    out = grid.labelled_grid(cells, ["text_cfg 7.5"], ["image_cfg 1.5"], label_width=80)
    assert (out[: grid.LABEL_HEIGHT] < 0.5).any()  # dark text on the white header

"""The dual-guidance formula of the paper, and its exact shortcuts."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import FLOAT64_ATOL

from ip2p.errors import IP2PError
from ip2p.guidance import BRANCH_ORDER, MAX_CFG, Branch, Guidance


def combine(predictions, s_t, s_i):
    return Guidance(s_t, s_i).combine(predictions)


def branches_needed(text_cfg, image_cfg):
    return Guidance(text_cfg, image_cfg).branches


def paper_formula(full, image, uncond, s_t, s_i):
    """Eq. 3 of Brooks et al. exactly as written in the paper's edit script."""
    return uncond + s_t * (full - image) + s_i * (image - uncond)


@pytest.fixture
def predictions():
    gen = torch.Generator().manual_seed(0)
    return {branch: torch.randn(2, 4, 8, 8, generator=gen) for branch in BRANCH_ORDER}


@pytest.mark.parametrize(("s_t", "s_i"), [(7.5, 1.5), (3.0, 0.5), (1.0, 0.0), (0.0, 2.5), (0.5, 1.2)])
def test_combination_equals_the_paper_formula(predictions, s_t, s_i):
    p = predictions
    expected = paper_formula(p[Branch.FULL], p[Branch.IMAGE], p[Branch.UNCOND], s_t, s_i)
    torch.testing.assert_close(combine(p, s_t, s_i), expected, rtol=0, atol=1e-6)


def test_image_cfg_below_one_and_text_cfg_at_most_one_still_guide(predictions):
    guided = combine(predictions, 1.0, 0.5)
    assert not torch.allclose(guided, predictions[Branch.FULL])


def test_the_batch_order_is_diffusers_full_image_uncond():
    assert BRANCH_ORDER == (Branch.FULL, Branch.IMAGE, Branch.UNCOND)


def test_image_cfg_one_needs_two_branches():
    assert branches_needed(7.5, 1.0) == (Branch.FULL, Branch.IMAGE)


def test_both_scales_one_needs_one_branch():
    assert branches_needed(1.0, 1.0) == (Branch.FULL,)


def test_other_scales_need_all_three_branches():
    assert branches_needed(1.0, 1.5) == BRANCH_ORDER


@pytest.mark.numerics
def test_two_branch_shortcut_equals_the_full_formula(predictions):
    p = {branch: value.double() for branch, value in predictions.items()}
    shortcut = combine({b: p[b] for b in (Branch.FULL, Branch.IMAGE)}, 7.5, 1.0)
    # other op sequence, float64: exact in algebra (float32 differed by 3.8e-6, 9.5e-6 across kernel settings)
    torch.testing.assert_close(
        shortcut, paper_formula(p[Branch.FULL], p[Branch.IMAGE], p[Branch.UNCOND], 7.5, 1.0), atol=FLOAT64_ATOL, rtol=0
    )


@pytest.mark.numerics
def test_one_branch_shortcut_equals_the_full_formula(predictions):
    p = {branch: value.double() for branch, value in predictions.items()}
    shortcut = combine({Branch.FULL: p[Branch.FULL]}, 1.0, 1.0)
    # other op sequence, float64: exact in algebra (float32 differed by 6e-7, 1.1e-6 across kernel settings)
    torch.testing.assert_close(
        shortcut, paper_formula(p[Branch.FULL], p[Branch.IMAGE], p[Branch.UNCOND], 1.0, 1.0), atol=FLOAT64_ATOL, rtol=0
    )


def test_combine_batch_reads_the_branches_in_batch_order(predictions):
    batched = torch.cat([predictions[b] for b in BRANCH_ORDER])
    torch.testing.assert_close(Guidance(7.5, 1.5).combine_batch(batched), combine(predictions, 7.5, 1.5))


def test_missing_branch_is_a_programming_error(predictions):
    with pytest.raises(ValueError, match="uncond"):
        combine({Branch.FULL: predictions[Branch.FULL], Branch.IMAGE: predictions[Branch.IMAGE]}, 7.5, 1.5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.5, MAX_CFG + 1, True, "7.5"])
@pytest.mark.parametrize("which", ["text_cfg", "image_cfg"])
def test_unusable_scales_are_refused_with_the_scale_named(bad, which):
    scales = {"text_cfg": 7.5, "image_cfg": 1.5, which: bad}
    with pytest.raises(IP2PError, match=which):
        branches_needed(**scales)


def test_scales_are_stored_as_floats_once_checked():
    value = Guidance(7, 1)
    assert (value.text_cfg, value.image_cfg) == (7.0, 1.0)
    assert isinstance(value.text_cfg, float)

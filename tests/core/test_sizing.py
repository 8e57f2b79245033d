"""The "paper" and "keep" resize policies."""

from __future__ import annotations

import pytest
import torch

from ip2p import sizing
from ip2p.errors import IP2PError


@pytest.mark.parametrize(
    ("size", "expected"),
    [((512, 512), (512, 512)), ((1024, 768), (512, 384)), ((768, 1024), (384, 512)), ((640, 360), (512, 320))],
)
def test_paper_scales_the_long_side_to_max_side_in_multiples_of_64(size, expected):
    assert sizing.paper_size(*size, max_side=512) == expected


def test_paper_never_exceeds_max_side_for_extreme_aspect_ratios():
    # The paper's formula would give 4032 × 64 here: its ceil on the short side overshoots.
    width, height = sizing.paper_size(4000, 63, max_side=512)
    assert max(width, height) <= 512 and width % 64 == 0 and height % 64 == 0


@pytest.mark.parametrize("size", [(100, 37), (3000, 17), (17, 3000), (513, 511), (64, 64)])
def test_paper_sides_are_multiples_of_64_within_max_side(size):
    width, height = sizing.paper_size(*size, max_side=512)
    assert width % 64 == 0 and height % 64 == 0
    assert 64 <= width <= 512 and 64 <= height <= 512


def test_keep_rounds_to_multiples_of_8():
    assert sizing.keep_size(100, 37) == (104, 40)  # 12.5 and 4.6 eighths


def test_keep_returns_the_input_size():
    images = torch.rand(1, 3, 37, 100)
    working = sizing.prepare(images, "keep")
    assert working.shape[-2:] == (40, 104)
    assert sizing.restore(working, (100, 37), "keep").shape[-2:] == (37, 100)


def test_paper_fit_crops_to_the_working_size():
    images = torch.rand(2, 3, 300, 400)
    assert sizing.prepare(images, "paper", 256).shape == (2, 3, 192, 256)


def test_an_image_already_at_working_size_is_untouched():
    images = torch.rand(1, 3, 64, 64)
    assert sizing.prepare(images, "paper", 64) is images


def test_fit_crop_keeps_the_centre():
    images = torch.zeros(1, 1, 64, 192)
    images[..., 64:128] = 1.0  # the middle third is white
    cropped = sizing.fit_crop(images, (64, 64))
    assert cropped.mean().item() == pytest.approx(1.0, abs=1e-3)


def test_unknown_policy_names_the_choices():
    with pytest.raises(IP2PError, match="paper, keep"):
        sizing.working_size(64, 64, "stretch")


@pytest.mark.parametrize("size", [(7, 64), (64, 3)])
def test_images_under_8_px_are_refused(size):
    with pytest.raises(IP2PError, match="at least 8 px"):
        sizing.check_input_size(*size)


def test_images_over_the_limit_are_refused_and_the_limit_is_named():
    with pytest.raises(IP2PError, match="limit of 1024"):
        sizing.check_input_size(2048, 512, max_input_side=1024)


# -- the model's own working size --------------------------------------------------------------


def _configs(sample_size, vae_levels: int) -> tuple[dict, dict]:
    return {"sample_size": sample_size}, {"block_out_channels": [32] * vae_levels}


@pytest.mark.parametrize(
    ("sample_size", "vae_levels", "expected"),
    [(64, 4, 512), (16, 3, 64), (32, 2, 64), (128, 4, 1024), (96, 4, 768)],
    ids=["sd15", "toy", "tiny", "sdxl-shaped", "sd2-base-shaped"],
)
def test_a_models_own_side_is_its_unet_sample_size_times_the_vae_factor(sample_size, vae_levels, expected):
    assert sizing.model_max_side(*_configs(sample_size, vae_levels)) == expected


def test_a_rectangular_sample_size_gives_its_longer_side():
    assert sizing.model_max_side(*_configs([48, 64], 4)) == 512


@pytest.mark.parametrize(
    ("sample_size", "vae_levels", "expected"), [(8, 2, 64), (40, 2, 64), (100, 2, 192), (1024, 4, 4096)]
)
def test_a_models_own_side_is_one_the_paper_policy_accepts(sample_size, vae_levels, expected):
    side = sizing.model_max_side(*_configs(sample_size, vae_levels))
    assert side == expected
    assert sizing.paper_size(side, side, side) == (side, side)


@pytest.mark.parametrize("sample_size", [None, 0, "64", True])
def test_a_config_without_a_usable_sample_size_gives_the_default_side(sample_size):
    assert sizing.model_max_side(*_configs(sample_size, 4)) == sizing.DEFAULT_MAX_SIDE

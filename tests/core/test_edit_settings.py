"""EditSettings: the paper's defaults, and a fixable error for every setting that cannot work."""

from __future__ import annotations

import dataclasses

import pytest

from ip2p.errors import IP2PError
from ip2p.headless.editor import EditSettings


def test_defaults_are_the_papers():
    settings = EditSettings("make it winter")
    assert (settings.steps, settings.text_cfg, settings.image_cfg) == (100, 7.5, 1.5)
    assert (settings.sampler, settings.scheduler, settings.resize) == ("euler_ancestral", "normal", "paper")


def test_the_working_side_is_left_to_the_model_by_default():
    assert EditSettings("make it winter").max_side is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "steps is 0"),
        ({"steps": 1001}, "steps is 1001.*from 1 to 1000"),
        ({"steps": 1000}, "steps is 1000.*'normal'.*at most 999 steps"),
        ({"max_side": 4097}, "max_side is 4097.*at most 4096"),
        ({"max_input_side": 16385}, "max_input_side is 16385.*16384"),
        ({"sampler": "dpmpp_2m_karras"}, "--sampler dpmpp_2m --scheduler karras"),
        ({"steps": -3}, "steps is -3"),
        ({"steps": 2.5}, "whole number"),
        ({"text_cfg": float("nan")}, "text_cfg is nan"),
        ({"image_cfg": float("inf")}, "image_cfg is inf"),
        ({"text_cfg": -1.0}, "must be ≥ 0"),
        ({"image_cfg": -0.5}, "must be ≥ 0"),
        ({"sampler": "k_euler"}, "Unknown sampler 'k_euler'"),
        ({"scheduler": "cosine"}, "Unknown scheduler 'cosine'"),
        ({"seed": -1}, "seed is -1"),
        ({"resize": "stretch"}, "Unknown resize policy"),
        ({"max_side": 32}, "max_side is 32"),
        ({"max_input_side": 4}, "max_input_side is 4"),
        ({"instruction": None}, "instruction must be text"),
    ],
)
def test_impossible_settings_are_refused_with_the_fix(change, message):
    with pytest.raises(IP2PError, match=message):
        dataclasses.replace(EditSettings("make it winter"), **change)


@pytest.mark.parametrize(("text_cfg", "image_cfg"), [(0.0, 0.0), (1.0, 0.5), (0.5, 1.5), (1.0, 1.0)])
def test_scales_diffusers_would_ignore_are_valid(text_cfg, image_cfg):
    EditSettings("make it winter", text_cfg=text_cfg, image_cfg=image_cfg)


@pytest.mark.parametrize("instruction", ["", "   ", "\n\t"])
def test_blank_instructions_are_empty(instruction):
    assert EditSettings(instruction).is_empty


def test_the_most_steps_run_on_a_schedule_that_reaches_them():
    assert EditSettings("make it winter", steps=1000, sampler="euler", scheduler="karras").steps == 1000

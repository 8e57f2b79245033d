"""The working size comes from the input, at most the model's own, unless ``--max-side`` / ``max_side`` says otherwise.

A model's own long side is its UNet's ``sample_size`` × the VAE's factor: 512 for SD 1.5, 64 for the
toy model and the tiny test model, and never more than twice its architecture's native size, whatever
its config claims. The side used is recorded in every PNG edited under ``paper``.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image

from ip2p import cli
from ip2p.headless import libraries
from ip2p.headless.editor import EditSettings, default_side, edit, model_max_side
from ip2p.headless.random_model import architecture_config, build_random_model
from ip2p.images import read_metadata
from ip2p.model_family import SD15_IP2P

FAST = ["--steps", "2", "--sampler", "euler", "-q"]


def _shaped_like(size: str, **unet_config):
    """A stand-in model with the UNet and VAE of a named architecture, built without weights (meta device)."""
    diffusers, _ = libraries()
    config = architecture_config(size)
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**{**config["unet"], **unet_config})
        vae = diffusers.AutoencoderKL(**config["vae"])
    return types.SimpleNamespace(unet=unet, vae=vae, family=SD15_IP2P)


def _write_image(path, width: int, height: int):
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _edit(model, image, out, *extra: str) -> list[str]:
    return ["edit", "--model", str(model), "--image", str(image), "--instruction", "make it red", "--out", str(out),
            *FAST, *extra]  # fmt: skip


# -- the side a model gives --------------------------------------------------------------------


def test_an_sd15_shaped_model_works_at_up_to_512():
    model = _shaped_like("sd15")
    assert model_max_side(model) == 512
    assert EditSettings("make it red").for_image(model, 1024, 768).max_side == 512


@pytest.mark.parametrize("size", ["toy", "tiny"])
def test_the_toy_and_tiny_models_work_at_64(size):
    model = build_random_model(size, in_channels=8) if size == "toy" else _shaped_like(size)
    assert model_max_side(model) == 64
    assert EditSettings("make it red").for_image(model, 512, 512).max_side == 64


@pytest.mark.parametrize(("width", "height", "side"), [(48, 40, 64), (300, 200, 320), (200, 384, 384), (640, 480, 512)])
def test_the_default_side_is_the_inputs_rounded_up_to_64_at_most_the_models(width, height, side):
    assert default_side(_shaped_like("sd15"), width, height) == side


def test_a_config_claiming_a_huge_size_is_bounded_by_its_family(caplog):
    model = _shaped_like("sd15", sample_size=100000)
    assert model_max_side(model) == 1024 == SD15_IP2P.max_side  # twice SD 1.5's 512, not 4096
    assert "claims a 4096 px size" in caplog.text
    assert default_side(model, 48, 48) == 64  # a 48 px edit runs at 64 px


def test_a_given_max_side_is_kept_whatever_the_model_and_input():
    settings = EditSettings("make it red", max_side=256)
    assert settings.for_image(_shaped_like("sd15"), 48, 48).max_side == 256
    assert settings.for_image(_shaped_like("toy"), 1024, 1024).max_side == 256


def test_the_editor_works_at_the_models_side_by_default(toy_model):
    image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    edited = edit(toy_model, image, EditSettings("make it red", steps=1, sampler="euler"), progress=False)
    assert edited.shape == (1, 3, 64, 64)  # at 512 (SD 1.5's side) it would be 384×512


# -- `ip2p edit` end to end --------------------------------------------------------------------


def test_ip2p_edit_without_max_side_works_at_the_models_side_and_records_it(toy_single_file, tmp_path):
    image, out = _write_image(tmp_path / "in.png", 256, 128), tmp_path / "out.png"
    assert cli.main(_edit(toy_single_file, image, out)) == 0
    assert Image.open(out).size == (64, 64)  # the short side is at least 64 under paper
    metadata = read_metadata(out)
    assert (metadata["resize"], metadata["max_side"]) == ("paper", 64)


def test_ip2p_edit_with_max_side_works_at_that_side_and_records_it(toy_single_file, tmp_path):
    image, out = _write_image(tmp_path / "in.png", 256, 128), tmp_path / "out.png"
    assert cli.main(_edit(toy_single_file, image, out, "--max-side", "128")) == 0
    assert Image.open(out).size == (128, 64)
    assert read_metadata(out)["max_side"] == 128


def test_ip2p_edit_help_says_the_default_comes_from_the_input_and_the_model(capsys):
    assert cli.main(["edit", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        "the input's long side" in help_text and "the model's own size" in help_text and "512 for SD 1.5" in help_text
    )

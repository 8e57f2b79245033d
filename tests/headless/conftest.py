"""Shared fixtures for the headless (diffusers) tests: the tiny and toy random models, in memory and on disk."""

from __future__ import annotations

import os

import pytest

# The headless extra (diffusers, transformers) is part of the test install: a missing one fails here.
from ip2p.headless.export import save_diffusers, save_single_file
from ip2p.headless.random_model import build_random_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub from the tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny InstructPix2Pix model (8-channel UNet, 64 px images), random weights, seed 0."""
    return build_random_model("tiny", in_channels=8, seed=0)


@pytest.fixture(scope="session")
def tiny_base_model():
    """A tiny base model (4-channel UNet): refused for editing, fine for training and data generation."""
    return build_random_model("tiny", in_channels=4, seed=1)


@pytest.fixture(scope="session")
def tiny_diffusers_dir(tiny_model, tmp_path_factory):
    """``tiny_model`` saved as a diffusers folder."""
    return save_diffusers(tiny_model, tmp_path_factory.mktemp("tiny_diffusers") / "model")


@pytest.fixture(scope="session")
def tiny_single_file(tiny_model, tmp_path_factory):
    """``tiny_model`` saved as one original-layout .safetensors file."""
    return save_single_file(tiny_model, tmp_path_factory.mktemp("tiny_single") / "tiny-ip2p.safetensors")


@pytest.fixture(scope="session")
def toy_model():
    """The toy world's architecture (ip2p/headless/configs/toy.json), random weights, seed 0."""
    return build_random_model("toy", in_channels=8, seed=0)


@pytest.fixture(scope="session")
def toy_single_file(toy_model, tmp_path_factory):
    """``toy_model`` saved as one original-layout .safetensors file."""
    return save_single_file(toy_model, tmp_path_factory.mktemp("toy_single") / "toy-ip2p.safetensors")


@pytest.fixture(scope="session")
def toy_diffusers_dir(toy_model, tmp_path_factory):
    """``toy_model`` saved as a diffusers folder."""
    return save_diffusers(toy_model, tmp_path_factory.mktemp("toy_diffusers") / "model")

"""Model families and the latent-scale convention."""

from __future__ import annotations

import pytest
import torch

from ip2p import model_family as mf
from ip2p.errors import IP2PError


def test_sd15_with_8_channels_is_instructpix2pix_with_an_unscaled_image_latent():
    family = mf.classify("sd15", 8)
    assert family is mf.SD15_IP2P and not family.image_latent_scaled


def test_cosxl_edit_scales_the_image_latent():
    family = mf.classify("sdxl", 8, edm_v_prediction=True)
    latent = torch.ones(1, 4, 2, 2)
    assert family is mf.COSXL_EDIT
    assert family.image_latent(latent, 0.13025).mean().item() == pytest.approx(0.13025)


def test_sdxl_instructpix2pix_keeps_the_image_latent_unscaled():
    latent = torch.ones(1, 4, 2, 2)
    assert mf.classify("sdxl", 8).image_latent(latent, 0.13025) is latent


def test_a_4_channel_model_is_refused_for_editing_with_what_to_load_instead():
    with pytest.raises(IP2PError, match="not an InstructPix2Pix model.*8"):
        mf.require_edit_model(mf.classify("sd15", 4), "base.safetensors")


def test_unknown_architectures_are_named():
    with pytest.raises(IP2PError, match="9 input channels"):
        mf.classify("sd15", 9)

"""conv_in widening 4 -> 8 channels: the base UNet's function is kept, the new channels start at zero."""

from __future__ import annotations

import torch
from ip2p_train.model import EMA, load_base

from ip2p.headless.export import save_single_file
from ip2p.headless.random_model import build_random_model
from ip2p.headless.widen import widen_conv_in, widen_model


def _base():
    return build_random_model("tiny", in_channels=4, seed=0)


def test_the_widened_unet_computes_the_base_output_with_a_zero_image_latent():
    base = _base()
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        before = base.unet(latent, t, text).sample
        widen_conv_in(base.unet)
        after = base.unet(torch.cat([latent, torch.zeros_like(latent)], 1), t, text).sample
        anything = base.unet(torch.cat([latent, torch.randn_like(latent)], 1), t, text).sample
    assert torch.equal(before, after)
    assert torch.equal(before, anything)  # zero weights: the image latent has no effect until trained


def test_the_new_channels_are_zero_and_the_old_ones_and_bias_are_kept():
    base = _base()
    old_weight, old_bias = base.unet.conv_in.weight.detach().clone(), base.unet.conv_in.bias.detach().clone()
    widen_model(base)
    conv = base.unet.conv_in
    assert conv.weight.shape[1] == 8 and base.unet.config.in_channels == 8
    assert torch.equal(conv.weight[:, :4], old_weight) and torch.equal(conv.bias, old_bias)
    assert torch.count_nonzero(conv.weight[:, 4:]) == 0
    assert base.family.is_edit_model


def test_a_base_model_file_is_widened_on_load_and_its_ema_is_widened_too(tmp_path):
    path = save_single_file(_base(), tmp_path / "base.safetensors")
    model = load_base(str(path))
    assert model.unet.conv_in.in_channels == 8 and model.family.is_edit_model
    ema = EMA(model.unet, 0.999)
    assert ema.shadow[[n for n, _ in model.unet.named_parameters()].index("conv_in.weight")].shape[1] == 8


def test_exporting_the_ema_weights_leaves_the_trained_weights_untouched():
    from ip2p_train.model import model_for_export, trained_state

    model = build_random_model("tiny", in_channels=8, seed=0)
    ema = EMA(model.unet, 0.9)
    with torch.no_grad():
        for shadow in ema.shadow:
            shadow.add_(1.0)  # the EMA now differs from the trained weights
    trained = {k: v.clone() for k, v in model.unet.state_dict().items()}
    exported = model_for_export(model, model.unet, trained_state(model.unet, ema))
    assert all(torch.equal(v, trained[k]) for k, v in model.unet.state_dict().items())
    assert torch.equal(exported.unet.conv_in.weight, trained["conv_in.weight"] + 1.0)

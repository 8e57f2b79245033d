"""The headless editor: dual guidance in one batched UNet call, shortcuts, seeds, sizes, refusals."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from editor_fixtures import IMAGE_SIZE, make_image, record_unet
from numerics import IMAGE_LEVEL

from ip2p import guidance
from ip2p.errors import IP2PError
from ip2p.headless import schedulers
from ip2p.headless.editor import EditSettings, edit, encode_image_latent, encode_text
from ip2p.model_family import COSXL_EDIT

STEPS = 2
# DESIGN §2: exact in algebra; float32 with another UNet batch: measured 7.2e-7 (decoded images, every kernel setting)
SHORTCUT_TOLERANCE = 1e-5


def _settings(**change) -> EditSettings:
    base = EditSettings("make it red", steps=STEPS, sampler="euler", max_side=IMAGE_SIZE, seed=3)
    return dataclasses.replace(base, **change)


def _always_three_branches(monkeypatch):
    """Make guidance use the full formula even where a shortcut applies (the reference)."""

    monkeypatch.setattr(guidance.Guidance, "branches", property(lambda self: guidance.BRANCH_ORDER))


# -- what comes back -------------------------------------------------------------------------


@pytest.mark.parametrize("instruction", ["", "   "])
def test_an_empty_instruction_returns_the_input_without_a_model_call(tiny_model, instruction):
    image = make_image(height=40, width=72)
    with record_unet(tiny_model.unet) as calls:
        result = edit(tiny_model, image, _settings(instruction=instruction), progress=False)
    assert calls.rows == []
    torch.testing.assert_close(result, image, rtol=0, atol=0)


def test_the_edit_is_an_image_in_unit_range_that_differs_from_the_input(tiny_model):
    image = make_image()
    result = edit(tiny_model, image, _settings(), progress=False)
    assert result.shape == image.shape and result.dtype == torch.float32
    assert 0 <= result.min() and result.max() <= 1
    assert (result - image).abs().mean() > 0.01


def test_paper_resize_returns_the_working_size(tiny_model):
    result = edit(tiny_model, make_image(height=60, width=100), _settings(resize="paper"), progress=False)
    assert result.shape[-2:] == (64, 64)


def test_keep_resize_returns_the_input_size(tiny_model):
    with record_unet(tiny_model.unet) as calls:
        result = edit(tiny_model, make_image(height=42, width=70), _settings(resize="keep"), progress=False)
    assert result.shape[-2:] == (42, 70)
    assert calls.inputs[0].shape[-2:] == (40 // 2, 72 // 2)  # edited at multiples of 8, latents ×½


@pytest.mark.numerics
def test_an_images_edit_does_not_depend_on_its_batch(tiny_model):
    images, settings = make_image(batch=3), _settings(sampler="euler_ancestral")  # per-step noise too
    together = edit(tiny_model, images, settings, progress=False)
    alone = torch.cat([edit(tiny_model, images[i : i + 1], settings, progress=False) for i in range(3)])
    # batch of 3 against 3 calls: decoded images within one 8-bit level (measured 4.2e-6; the same comparison in
    # test_p2p_generate measured 7.3e-4 on an AVX-512 Xeon, issue 21)
    torch.testing.assert_close(together, alone, rtol=0, atol=IMAGE_LEVEL)


def test_equal_images_in_one_batch_get_equal_edits(tiny_model):
    images = make_image().expand(2, -1, -1, -1)  # each image has its own generator seeded with the seed
    result = edit(tiny_model, images, _settings(sampler="euler_ancestral"), progress=False)
    torch.testing.assert_close(result[0], result[1], rtol=0, atol=1e-4)


def test_a_nan_result_is_refused_naming_the_likely_causes(tiny_model):
    poisoned = dataclasses.replace(tiny_model, unet=copy.deepcopy(tiny_model.unet))
    with torch.no_grad():
        poisoned.unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(IP2PError, match=r"NaN or infinite.*weights.*NaN/inf"):
        edit(poisoned, make_image(), _settings(), progress=False)


def test_steps_the_models_own_schedule_cannot_run_are_refused_before_sampling(tiny_model):
    short = dataclasses.replace(
        tiny_model, scheduler_config={**tiny_model.scheduler_config, "num_train_timesteps": 500}
    )
    settings = _settings(steps=600)  # fine on SD's 1000 timesteps, too many for this model's 500
    with record_unet(tiny_model.unet) as calls, pytest.raises(IP2PError, match="500 training timesteps"):
        edit(short, make_image(), settings, progress=False)
    assert calls.rows == []


def test_a_batch_edits_every_image(tiny_model):
    images = make_image(batch=2)
    result = edit(tiny_model, images, _settings(), progress=False)
    assert result.shape == images.shape
    assert (result[0] - result[1]).abs().max() > 0.01


# -- guidance --------------------------------------------------------------------------------


def test_each_step_is_one_unet_call_with_all_three_branches(tiny_model):
    with record_unet(tiny_model.unet) as calls:
        edit(tiny_model, make_image(batch=2), _settings(), progress=False)
    assert calls.rows == [3 * 2] * STEPS


def test_the_branches_are_full_image_and_uncond_in_diffusers_order(tiny_model):
    settings = _settings(negative="blurry")
    with record_unet(tiny_model.unet) as calls:
        edit(tiny_model, make_image(), settings, progress=False)
    text, sample = calls.text[0], calls.inputs[0]
    with torch.no_grad():
        instruction, negative = encode_text(tiny_model, ["make it red"]), encode_text(tiny_model, ["blurry"])
        image_latent = encode_image_latent(tiny_model, make_image())
    torch.testing.assert_close(text, torch.cat([instruction, negative, negative]))
    image_part = sample[:, 4:]
    torch.testing.assert_close(image_part[:2], image_latent.expand(2, -1, -1, -1))
    assert image_part[2].abs().max() == 0  # "no image" is the all-zeros latent


@pytest.mark.parametrize(
    ("text_cfg", "image_cfg", "rows"),
    [(7.5, 1.0, 2), (1.0, 1.0, 1)],
    ids=["image_cfg_1_two_branches", "both_1_one_branch"],
)
@pytest.mark.numerics
def test_shortcuts_use_fewer_rows_and_equal_the_full_formula(tiny_model, monkeypatch, text_cfg, image_cfg, rows):
    settings = _settings(text_cfg=text_cfg, image_cfg=image_cfg)
    image = make_image()
    with record_unet(tiny_model.unet) as calls:
        short = edit(tiny_model, image, settings, progress=False)
    assert calls.rows == [rows] * STEPS
    _always_three_branches(monkeypatch)
    with record_unet(tiny_model.unet) as calls:
        full = edit(tiny_model, image, settings, progress=False)
    assert calls.rows == [3] * STEPS
    torch.testing.assert_close(short, full, rtol=0, atol=SHORTCUT_TOLERANCE)


def _paper_formula_one_step(model, image, settings, noise):
    """One Euler step to sigma 0 with the three predictions from three separate UNet calls."""
    scheduler = schedulers.make_scheduler(model.scheduler_config, "euler", settings.scheduler)
    scheduler.set_timesteps(1)
    t, sigma = scheduler.timesteps[0], scheduler.sigmas[0]
    tokens = [
        model.tokenizer(text, padding="max_length", max_length=model.tokenizer.model_max_length, return_tensors="pt")
        for text in (settings.instruction, settings.negative)
    ]
    with torch.no_grad():
        c_text, no_text = (model.text_encoder(tok.input_ids)[0] for tok in tokens)
        c_image = model.vae.encode(image * 2 - 1).latent_dist.mode()
        latents = noise * scheduler.init_noise_sigma
        scaled = latents / (sigma**2 + 1) ** 0.5

        def eps(image_latent, text):
            return model.unet(torch.cat([scaled, image_latent], dim=1), t, encoder_hidden_states=text).sample

        e_full, e_image, e_uncond = eps(c_image, c_text), eps(c_image, no_text), eps(torch.zeros_like(c_image), no_text)
        guided = e_uncond + settings.text_cfg * (e_full - e_image) + settings.image_cfg * (e_image - e_uncond)
        denoised = latents - sigma * guided
        decoded = model.vae.decode(denoised / model.vae.config.scaling_factor).sample
    return (decoded / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize(
    ("text_cfg", "image_cfg"), [(1.0, 0.5), (0.5, 1.5), (0.8, 0.0)], ids=["image_below_1", "text_below_1", "both_low"]
)
@pytest.mark.numerics
def test_scales_diffusers_ignores_still_guide_by_the_papers_formula(tiny_model, text_cfg, image_cfg):
    settings = _settings(steps=1, scheduler="simple", text_cfg=text_cfg, image_cfg=image_cfg, negative="blurry")
    image = make_image()
    noise = torch.randn(1, 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2, generator=torch.Generator().manual_seed(5))
    ours = edit(tiny_model, image, settings, noise=noise, progress=False)
    reference = _paper_formula_one_step(tiny_model, image, settings, noise)
    # three separate UNet calls against one batch, float32: measured 8.9e-7 (decoded images); kept tight because a
    # guidance effect here may be only a few 8-bit levels
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    unguided = edit(
        tiny_model, image, dataclasses.replace(settings, text_cfg=1.0, image_cfg=1.0), noise=noise, progress=False
    )
    assert (ours - unguided).abs().max() > 0.01


def test_the_image_latent_is_the_unscaled_mode_for_sd15(tiny_model):
    image = make_image()
    with torch.no_grad():
        mode = tiny_model.vae.encode(image * 2 - 1).latent_dist.mode()
        torch.testing.assert_close(encode_image_latent(tiny_model, image), mode)


def test_the_image_latent_is_scaled_for_cosxl_edit(tiny_model):
    cosxl = dataclasses.replace(tiny_model, family=COSXL_EDIT)
    image = make_image()
    with torch.no_grad():
        mode = tiny_model.vae.encode(image * 2 - 1).latent_dist.mode()
        torch.testing.assert_close(encode_image_latent(cosxl, image), mode * tiny_model.vae.config.scaling_factor)


# -- seeds, noise and sigmas -----------------------------------------------------------------


def test_the_same_seed_gives_the_same_edit_and_another_seed_another(tiny_model):
    image = make_image()
    settings = _settings(sampler="euler_ancestral")
    first, again = (edit(tiny_model, image, settings, progress=False) for _ in range(2))
    other = edit(tiny_model, image, dataclasses.replace(settings, seed=4), progress=False)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (first - other).abs().max() > 0.01


def test_given_noise_replaces_the_seeded_draw(tiny_model):
    image, settings = make_image(), _settings()
    seeded = torch.randn(1, 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2, generator=torch.Generator().manual_seed(settings.seed))
    torch.testing.assert_close(
        edit(tiny_model, image, settings, noise=seeded, progress=False),
        edit(tiny_model, image, settings, progress=False),
        rtol=0,
        atol=0,
    )


def test_noise_of_the_wrong_shape_is_refused(tiny_model):
    with pytest.raises(IP2PError, match="noise must be a tensor of shape"):
        edit(tiny_model, make_image(), _settings(), noise=torch.randn(1, 4, 8, 8), progress=False)


@pytest.mark.numerics
def test_explicit_sigmas_on_the_models_timesteps_reproduce_its_schedule(tiny_model):
    settings = _settings(steps=4, scheduler="simple")  # trailing spacing: integer timesteps 999, 749, 499, 249
    scheduler = schedulers.make_scheduler(tiny_model.scheduler_config, "euler", "simple")
    scheduler.set_timesteps(4)
    noise = torch.randn(1, 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2, generator=torch.Generator().manual_seed(8))
    image = make_image()
    with record_unet(tiny_model.unet) as calls:
        explicit = edit(
            tiny_model,
            image,
            settings,
            # ComfyUI scales the start by sqrt(1 + sigma^2) at full denoise; diffusers' trailing spacing by sigma.
            noise=noise * scheduler.sigmas[0] / (1 + scheduler.sigmas[0] ** 2) ** 0.5,
            sigmas=scheduler.sigmas,
            progress=False,
        )
    assert calls.timesteps == scheduler.timesteps.tolist()
    # the start scaled another way round (float32): measured 5.4e-7 on the decoded images
    torch.testing.assert_close(
        explicit, edit(tiny_model, image, settings, noise=noise, progress=False), rtol=0, atol=1e-5
    )


def test_explicit_sigmas_set_the_number_of_steps(tiny_model):
    sigmas = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    with record_unet(tiny_model.unet) as calls:
        edit(tiny_model, make_image(), _settings(steps=50), sigmas=sigmas, progress=False)
    assert len(calls.rows) == 4


# -- refusals --------------------------------------------------------------------------------


def test_a_base_model_is_refused_for_editing(tiny_base_model):
    with pytest.raises(IP2PError, match="not an InstructPix2Pix model"):
        edit(tiny_base_model, make_image(), _settings(), progress=False)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(1, 4, 64, 64), "batch, 3, height, width"),
        (torch.rand(3, 64, 64), "batch, 3, height, width"),
        (torch.rand(1, 3, 64, 64) * 255, r"in \[0, 1\]"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float images"),
        (torch.rand(1, 3, 4, 64), "at least 8 px"),
    ],
)
def test_images_that_cannot_be_edited_are_refused(tiny_model, images, message):
    with pytest.raises(IP2PError, match=message):
        edit(tiny_model, images, _settings(), progress=False)


def test_the_progress_bar_shows_only_when_asked(tiny_model, capsys):
    edit(tiny_model, make_image(), _settings(), progress=False)
    assert "ip2p edit" not in capsys.readouterr().err
    edit(tiny_model, make_image(), _settings(), progress=True)
    assert "ip2p edit" in capsys.readouterr().err

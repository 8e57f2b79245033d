"""Conditioning dropout and per-sample draws (ip2p.training): rates, exclusivity, batch independence."""

from __future__ import annotations

import math

import pytest
import torch

from ip2p.errors import IP2PError
from ip2p.training import DropoutMasks, apply_dropout, diffusion_draws, dropout_masks, ema_decay

DRAWS = 100_000


def _frequency_within_4_standard_errors(mask: torch.Tensor, rate: float) -> None:
    observed = mask.float().mean().item()
    standard_error = math.sqrt(rate * (1 - rate) / mask.numel())
    assert abs(observed - rate) < 4 * standard_error, (observed, rate, standard_error)


@pytest.mark.parametrize("rates", [(0.05, 0.05, 0.05), (0.1, 0.2, 0.3)])
def test_each_case_occurs_at_its_rate(rates):
    text, image, both = rates
    u = torch.rand(DRAWS, generator=torch.Generator().manual_seed(0))
    masks = dropout_masks(u, text, image, both)
    text_only = masks.drop_text & ~masks.drop_image
    image_only = masks.drop_image & ~masks.drop_text
    dropped_both = masks.drop_text & masks.drop_image
    kept = ~masks.drop_text & ~masks.drop_image
    _frequency_within_4_standard_errors(text_only, text)
    _frequency_within_4_standard_errors(image_only, image)
    _frequency_within_4_standard_errors(dropped_both, both)
    _frequency_within_4_standard_errors(kept, 1 - text - image - both)


def test_the_cases_are_exclusive_and_cover_every_sample():
    u = torch.rand(DRAWS, generator=torch.Generator().manual_seed(1))
    masks = dropout_masks(u)
    cases = torch.stack(
        [
            masks.drop_text & ~masks.drop_image,
            masks.drop_image & ~masks.drop_text,
            masks.drop_text & masks.drop_image,
            ~masks.drop_text & ~masks.drop_image,
        ]
    )
    assert torch.equal(cases.sum(0), torch.ones(DRAWS, dtype=torch.long))


def test_the_case_boundaries_follow_the_one_uniform_draw():
    masks = dropout_masks(torch.tensor([0.0, 0.0499, 0.05, 0.0999, 0.10, 0.1499, 0.15, 0.99]))
    assert masks.drop_text.tolist() == [True, True, False, False, True, True, False, False]
    assert masks.drop_image.tolist() == [False, False, True, True, True, True, False, False]


def test_rates_above_one_in_total_are_refused():
    with pytest.raises(IP2PError, match="exceeds 1"):
        dropout_masks(torch.rand(3), 0.5, 0.4, 0.2)


def test_dropped_text_becomes_the_empty_prompt_and_dropped_image_zeros():
    masks = DropoutMasks(drop_text=torch.tensor([True, False]), drop_image=torch.tensor([False, True]))
    text, empty, image = torch.ones(2, 3, 4), torch.full((1, 3, 4), 7.0), torch.ones(2, 4, 2, 2)
    new_text, new_image = apply_dropout(masks, text, empty, image)
    assert torch.equal(new_text[0], empty[0]) and torch.equal(new_text[1], text[1])
    assert torch.equal(new_image[0], image[0]) and torch.equal(new_image[1], torch.zeros(4, 2, 2))


def test_a_samples_draws_do_not_depend_on_its_batch():
    whole = diffusion_draws(3, [0, 1, 2, 3], (4, 2, 2), 1000)
    halves = [diffusion_draws(3, positions, (4, 2, 2), 1000) for positions in ([0, 1], [2, 3])]
    for name in ("u", "timesteps", "noise", "posterior"):
        assert torch.equal(getattr(whole, name), torch.cat([getattr(h, name) for h in halves]))
    assert not torch.equal(whole.noise[0], whole.noise[1])


def test_ema_decay_warms_up_to_its_ceiling():
    assert ema_decay(0.9999, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.9999, 10**7) == 0.9999
    assert ema_decay(0.9, 1, warmup=False) == 0.9


# --- min-SNR-γ loss weighting ------------------------------------------------------------------------

from ip2p.training import min_snr_weights  # noqa: E402


def _alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # SD's scaled_linear schedule
    return torch.cumprod(1 - betas, dim=0)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_clip_the_signal_to_noise_ratio_at_gamma(prediction):
    alpha_bar = _alphas_cumprod()
    timesteps = torch.tensor([0, 50, 200, 500, 999])
    snr = alpha_bar[timesteps] / (1 - alpha_bar[timesteps])
    weights = min_snr_weights(alpha_bar, timesteps, 5.0, prediction)
    natural = snr if prediction == "epsilon" else snr + 1
    assert torch.allclose(weights, torch.minimum(snr, torch.tensor(5.0)) / natural)
    noisy = snr < 5  # below γ: a noise target keeps its full weight, a velocity target SNR/(SNR+1)
    expected_noisy = torch.ones_like(snr) if prediction == "epsilon" else snr / (snr + 1)
    assert torch.allclose(weights[noisy], expected_noisy[noisy]) and noisy.any() and (~noisy).any()
    assert (weights[~noisy] < expected_noisy[~noisy]).all()  # the easy low-noise steps are turned down


def test_min_snr_weights_refuse_a_non_positive_gamma_and_an_unknown_target():
    with pytest.raises(ValueError, match="snr_gamma"):
        min_snr_weights(_alphas_cumprod(), torch.tensor([1]), 0.0, "epsilon")
    with pytest.raises(ValueError, match="sample"):
        min_snr_weights(_alphas_cumprod(), torch.tensor([1]), 5.0, "sample")

"""Training maths shared by the trainer and anything else that trains: pure torch, no diffusers.

Conditioning dropout (the paper's classifier-free guidance training): each sample draws ONE
uniform number ``u`` and, with the default rates of 5 % each,

- ``u < text``                          → the text is dropped (the empty prompt's embedding),
- ``text ≤ u < text + image``           → the image is dropped (an all-zeros image latent),
- ``text + image ≤ u < text + image + both`` → both are dropped,
- otherwise                             → both are kept.

The three cases are exclusive by construction. Per-sample random draws come from generators seeded
by ``(seed, sample position, stream)``, so a sample's noise, timestep and dropout do not depend on
the batch or the process that trained it (1 process × batch 4 draws what 2 processes × batch 2 do).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .errors import IP2PError

# Named streams of per-sample randomness: each gets its own generator, so adding a draw to one
# stream never shifts another's.
STREAM_AUGMENT = 0  # crop offsets and flip of the image pair
STREAM_DIFFUSION = 1  # dropout draw, timestep, noise, posterior sample


@dataclass(frozen=True)
class DropoutMasks:
    """Per-sample booleans: replace the text embedding by the empty prompt's / zero the image latent."""

    drop_text: torch.Tensor
    drop_image: torch.Tensor


def check_dropout_rates(text: float, image: float, both: float) -> None:
    """Refuse rates that are not probabilities or that add up to more than one."""
    for name, rate in (("dropout.text", text), ("dropout.image", image), ("dropout.both", both)):
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= float(rate) <= 1.0:
            raise IP2PError(f"{name} is {rate!r}; give a probability from 0 to 1 (the paper uses 0.05).")
    if text + image + both > 1.0 + 1e-9:
        raise IP2PError(
            f"dropout.text + dropout.image + dropout.both = {text + image + both:.3g} exceeds 1; the three cases "
            f"are exclusive, so their rates must add up to at most 1 (the paper: 0.05 each)."
        )


def dropout_masks(u: torch.Tensor, text: float = 0.05, image: float = 0.05, both: float = 0.05) -> DropoutMasks:
    """The conditioning-dropout masks from one uniform draw ``u`` in [0, 1) per sample (see the module doc)."""
    check_dropout_rates(text, image, both)
    text_only = u < text
    image_only = (u >= text) & (u < text + image)
    drop_both = (u >= text + image) & (u < text + image + both)
    return DropoutMasks(drop_text=text_only | drop_both, drop_image=image_only | drop_both)


def apply_dropout(
    masks: DropoutMasks, text_embeddings: torch.Tensor, empty_embedding: torch.Tensor, image_latents: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings with dropped rows replaced by the empty prompt's, image latents with dropped rows zeroed."""
    shape_t = (-1,) + (1,) * (text_embeddings.ndim - 1)
    shape_i = (-1,) + (1,) * (image_latents.ndim - 1)
    drop_text = masks.drop_text.to(text_embeddings.device).view(shape_t)
    drop_image = masks.drop_image.to(image_latents.device).view(shape_i)
    empty = empty_embedding.to(device=text_embeddings.device, dtype=text_embeddings.dtype).expand_as(text_embeddings)
    text = torch.where(drop_text, empty, text_embeddings)
    image = torch.where(drop_image, torch.zeros_like(image_latents), image_latents)
    return text, image


def sample_seed(seed: int, position: int, stream: int) -> int:
    """A 63-bit seed for one sample's stream of randomness, from the run seed and its position in the data stream."""
    digest = hashlib.blake2b(f"{seed}:{position}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_generator(seed: int, position: int, stream: int) -> torch.Generator:
    """A CPU generator for one sample's stream (draw on the CPU, then move: identical on every device)."""
    return torch.Generator().manual_seed(sample_seed(seed, position, stream))


@dataclass
class DiffusionDraws:
    """One batch's per-sample random draws for a training step (CPU tensors)."""

    u: torch.Tensor  # (B,) uniform in [0, 1): the conditioning-dropout draw
    timesteps: torch.Tensor  # (B,) int64 in [0, num_train_timesteps)
    noise: torch.Tensor  # (B, C, H, W) standard normal: the diffusion noise
    posterior: torch.Tensor  # (B, C, H, W) standard normal: the VAE posterior sample of the edited image


def diffusion_draws(
    seed: int, positions: list[int], latent_shape: tuple[int, ...], num_train_timesteps: int
) -> DiffusionDraws:
    """Each sample's draws, in a fixed order (u, timestep, noise, posterior), from its own generator."""
    us, ts, noises, posts = [], [], [], []
    for position in positions:
        g = sample_generator(seed, position, STREAM_DIFFUSION)
        us.append(torch.rand((), generator=g))
        ts.append(torch.randint(0, num_train_timesteps, (), generator=g))
        noises.append(torch.randn(latent_shape, generator=g))
        posts.append(torch.randn(latent_shape, generator=g))
    return DiffusionDraws(torch.stack(us), torch.stack(ts), torch.stack(noises), torch.stack(posts))


def ema_decay(decay: float, updates: int, warmup: bool = True) -> float:
    """The EMA decay for update number ``updates`` (1-based): LDM's warm-up ``min(decay, (1+n)/(10+n))``."""
    if not warmup:
        return decay
    return min(decay, (1.0 + updates) / (10.0 + updates))


def min_snr_weights(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float, prediction_type: str
) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via
    Min-SNR Weighting"): ``min(SNR, γ) / SNR`` for a noise target, ``/ (SNR + 1)`` for a velocity
    target (whose MSE already weighs each step by SNR + 1 relative to the noise's)."""
    if gamma <= 0:
        raise ValueError(f"snr_gamma must be positive (the paper uses 5), got {gamma}")
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha_bar / (1.0 - alpha_bar)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    if prediction_type == "epsilon":
        return clipped / snr
    raise ValueError(f"min-SNR weighting supports epsilon and v_prediction targets, not {prediction_type!r}")

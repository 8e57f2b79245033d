"""The toy world's model: its vocabulary, its pretrained VAE, and the base folder the trainer fine-tunes.

The architecture is ``configs/toy.json`` (:func:`~.random_model.build_random_model` ``("toy")``):

- 64 px images, a VAE that downsamples ×4 to 16×16×4 latents;
- a 3.2 M-parameter InstructPix2Pix UNet (8 input channels), block_out_channels (32, 64, 128),
  cross-attention at 16×16 and 8×8 (and in the 4×4 mid block), plain ResNet blocks at 4×4;
- GroupNorm with 8 groups in the UNet and the VAE: with SD's 32 groups over 32 channels every
  channel is normalised on its own, which erases flat colours (the VAE learned colours several
  times slower, measured). ComfyUI hard-codes 32 groups (and SD's text encoder), so this model is
  for the headless backend;
- a 2-layer, 128-wide CLIP text encoder with random weights. It stays frozen: the UNet learns to
  read its fixed random features, which only have to tell the words apart. So that they do, its
  token embeddings are scaled up (:data:`WORD_EMBEDDING_SCALE`, :func:`random_toy_model`): at the
  random init's scale a word weighs no more than its position, and "make the circle red" and
  "... blue" differed only by cosine 0.90 at the colour word (0.08 scaled); the held-out edits
  after 800 steps then improved from 0.90 to 0.75 of the unchanged input's distance (measured);
- the toy vocabulary (:func:`toy_vocab`): CLIP's 512 byte tokens, merges that spell every toy
  word (:data:`~ip2p.datasets.toy.TOY_WORDS`) and a few dozen common instruction words as one
  token each, and CLIP's start/end tokens last. Any other text still tokenizes (byte by byte).

A random VAE cannot decode, and the trainer keeps the VAE frozen, so the VAE is trained first,
in its own step (:func:`pretrain_vae`): rendered toy images of a training seed range, L1
reconstruction plus SD's small KL weight, AdamW, no GAN and no perceptual loss (not tried; the
error left after a few hundred steps is soft shape edges). :func:`build_toy_base` puts the parts together and saves the diffusers
folder the trainer's ``model.base`` points at.

Seeds: the VAE trains on example seeds drawn from ``toy_seeds(VAE_TRAIN_RUN, SEEDS_PER_RUN)``
and is measured on ``toy_seeds(VAE_HELDOUT_RUN, heldout)``; it never sees the held-out seeds, nor
those of ``ip2p dataset toy --seed S`` runs with small S (the trainer's data and evaluation sets).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..datasets.toy import DEFAULT_SIZE, SEEDS_PER_RUN, render_example, toy_seeds
from ..errors import IP2PError
from ..formats.atomic import atomic_file
from ..formats.toy_vocab import EXTRA_WORDS, TOY_MAX_LENGTH, VOCAB_WORDS, toy_tokenizer, toy_tokenizer_files, toy_vocab  # noqa: F401 - the toy model's vocabulary
from .random_model import build_random_model

logger = logging.getLogger(__name__)

TOY_SIZE = "toy"  # the architecture's name in random_model.SIZES / configs/toy.json

# The trained toy model that ships in the package (a diffusers folder): `ip2p demo`'s default model,
# and the frozen VAE and text encoder of `model.base=config:toy`.
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "toy-ip2p"

# `ip2p dataset toy --seed` runs of the toy model's recipe: it trains on the first, and the demo
# scores it on the second, which no training ever sees.
TRAIN_RUN = 1
HELDOUT_RUN = 2


# Example-seed runs of the VAE step (toy_seeds(run, n) = run·10⁶ … run·10⁶ + n − 1): far from the
# small --seed values of `ip2p dataset toy` runs, which the trainer trains and evaluates on.
VAE_TRAIN_RUN = 9000
VAE_HELDOUT_RUN = 9001

# Defaults of the VAE step. Measured on 2 shared CPU cores (load ~2), held-out error on 32 images:
#   600 steps × 8 images, lr 4e-4: 0.027 in 186 s — colours right, shape edges soft;
#   1200 steps × 8 images, lr 6e-4: 0.016 in ~450 s — squares square, stars still rounded.
# lr 2e-3, and GroupNorm with one channel per group, both stalled near 0.15–0.2 for hundreds of steps.
VAE_STEPS = 600  # optimiser steps
VAE_BATCH = 8  # images per step (input and edited image of batch/2 examples)
VAE_LR = 4e-4  # AdamW peak learning rate; linear warm-up, cosine decay to a tenth
VAE_KL_WEIGHT = 1e-6  # SD's: on the per-image KL sum, against the per-image L1 sum
VAE_HELDOUT_EXAMPLES = 32  # held-out examples (×2 images) for the reported error and the latent std
_EVAL_CHUNK = 32  # images per no-grad forward when measuring


# --- the VAE step ------------------------------------------------------------------------------------


def toy_images(seeds, size: int = DEFAULT_SIZE) -> torch.Tensor:
    """(2·len(seeds), 3, size, size) in [0, 1]: the input and the edited image of each example, in turn."""
    arrays = []
    for seed in seeds:
        example = render_example(int(seed), size)
        arrays += [np.asarray(example.input_image), np.asarray(example.edited_image)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def _learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5 % of steps (at least one), then cosine decay to peak/10."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


START_LOGVAR = -10.0  # the posterior's initial log-variance (std 0.007) in start_nearly_deterministic_


@torch.no_grad()
def start_nearly_deterministic_(vae) -> None:
    """Make a fresh VAE's posterior start with log-variance :data:`START_LOGVAR` everywhere.

    A random encoder's log-variance is about 0, so the decoder first sees latents drowned in unit
    sampling noise and learns next to nothing (held-out error stuck near 0.2 for hundreds of
    steps, measured). Zeroing the log-variance half of ``quant_conv`` and setting its bias lets
    training start as a plain autoencoder; the KL term lets the variance grow where the
    reconstruction allows. Call it once, before :func:`pretrain_vae`, on a VAE that was never trained.
    """
    channels = vae.config.latent_channels
    vae.quant_conv.weight[channels:].zero_()
    vae.quant_conv.bias[channels:].fill_(START_LOGVAR)


@torch.no_grad()
def measure_vae(vae, images: torch.Tensor, seed: int = 0) -> dict:
    """Held-out figures of a VAE on images in [0, 1]: reconstruction error and latent statistics.

    ``mae``: mean absolute error of decode(posterior mode), clamped, in [0, 1] pixels.
    ``latent_std``: the standard deviation (about the global mean, all elements together, as in
    the latent-diffusion code that chose SD's 0.18215) of posterior samples, drawn with ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    errors, latents = [], []
    for chunk in images.split(_EVAL_CHUNK):
        posterior = vae.encode(chunk * 2 - 1).latent_dist
        decoded = vae.decode(posterior.mode()).sample
        errors.append(((decoded / 2 + 0.5).clamp(0, 1) - chunk).abs().flatten(1).mean(1))
        latents.append(posterior.sample(generator=generator))
    latents = torch.cat(latents)
    return {
        "mae": float(torch.cat(errors).mean()),
        "latent_std": float(latents.flatten().std()),
        "latent_mean": float(latents.mean()),
    }


def pretrain_vae(
    vae,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    size: int = DEFAULT_SIZE,
    progress: bool = True,
    lr: float = VAE_LR,
    kl_weight: float = VAE_KL_WEIGHT,
    heldout: int = VAE_HELDOUT_EXAMPLES,
) -> dict:
    """Train ``vae`` in place to reconstruct toy images, then set its ``scaling_factor``.

    Each step renders ``batch_size`` images of fresh examples: the input and edited image of
    ``ceil(batch_size / 2)`` example seeds drawn (with ``seed``) from ``toy_seeds(VAE_TRAIN_RUN,
    SEEDS_PER_RUN)``. Loss, as SD's VAE without its perceptual and GAN terms: per image, the summed
    L1 error of decode(posterior sample) in [-1, 1] pixels plus ``kl_weight`` × the summed KL to
    N(0, I); divided by the pixel values per image, so the reported loss is a mean L1. AdamW, peak
    ``lr`` (:func:`_learning_rate`), gradients clipped to norm 1.

    Afterwards ``vae.config.scaling_factor`` is set to 1 / std of its posterior samples on the
    held-out images, so latents × scaling_factor have unit variance, as SD's 0.18215 was chosen
    (the diffusion model then sees noise and data on the same scale). Returns metrics:
    ``initial_loss`` / ``train_loss`` (first step's, mean of the last 10 %), ``heldout_mae`` (mean
    absolute error in [0, 1] pixels on ``2 × heldout`` images of ``toy_seeds(VAE_HELDOUT_RUN,
    heldout)``), ``latent_std``, ``latent_mean``, ``scaling_factor``, ``seconds`` and the settings.
    """
    if steps < 0 or batch_size < 1:
        raise IP2PError(
            f"The VAE step needs steps ≥ 0 and batch_size ≥ 1 (got steps={steps}, batch_size={batch_size})."
        )
    if heldout < 1:
        raise IP2PError(f"The VAE step needs at least one held-out example (got heldout={heldout}).")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    train_range = toy_seeds(VAE_TRAIN_RUN, SEEDS_PER_RUN)
    heldout_images = toy_images(toy_seeds(VAE_HELDOUT_RUN, heldout), size)
    pixels = 3 * size * size
    examples_per_step = (batch_size + 1) // 2

    vae.train()
    vae.requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    losses: list[float] = []
    bar = _progress_bar(steps, progress)
    try:
        for step in range(steps):
            picks = torch.randint(0, len(train_range), (examples_per_step,), generator=generator)
            images = toy_images((train_range[int(i)] for i in picks), size)[:batch_size] * 2 - 1
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, steps, lr)
            posterior = vae.encode(images).latent_dist
            decoded = vae.decode(posterior.sample(generator=generator)).sample
            l1 = (decoded - images).abs().flatten(1).sum(1)
            loss = ((l1 + kl_weight * posterior.kl()) / pixels).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise IP2PError(f"The VAE loss became {losses[-1]} at step {step + 1}; lower lr (now {lr}).")
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    vae.eval()
    vae.requires_grad_(False)

    measured = measure_vae(vae, heldout_images, seed)
    scaling_factor = 1.0 / measured["latent_std"]
    vae.register_to_config(scaling_factor=scaling_factor)
    tail = losses[-max(1, len(losses) // 10) :]
    metrics = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "kl_weight": kl_weight,
        "seed": seed,
        "size": size,
        "initial_loss": losses[0] if losses else float("nan"),
        "train_loss": float(np.mean(tail)) if losses else float("nan"),
        "heldout_images": len(heldout_images),
        "heldout_mae": measured["mae"],
        "latent_std": measured["latent_std"],
        "latent_mean": measured["latent_mean"],
        "scaling_factor": scaling_factor,
        "seconds": time.perf_counter() - start,
    }
    logger.info(
        "Toy VAE: %d steps × %d images in %.0f s; held-out error %.4f, latent std %.3f (scaling_factor %.4f)",
        steps,
        batch_size,
        metrics["seconds"],
        metrics["heldout_mae"],
        metrics["latent_std"],
        scaling_factor,
    )
    return metrics


def _progress_bar(total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the headless extra
        return None
    return tqdm(total=total, desc="toy VAE", unit="step", disable=not enabled, leave=False)


def shipped_frozen_parts() -> tuple[dict, str]:
    """The shipped toy model's frozen parts, which ``model.base=config:toy`` trains with, and one hash of their
    weights (the latent cache's key names them). The pretrained VAE (a random VAE cannot decode) and the text
    encoder (random weights, fixed like SD's CLIP: the training seed then draws only the UNet; redrawn per
    seed, the encoder alone moved held-out scores by ~0.1)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from ..formats.hashing import model_hash

    classes = {"vae": AutoencoderKL, "text_encoder": CLIPTextModel}
    missing = [name for name in classes if not (SHIPPED_MODEL / name / "config.json").is_file()]
    if missing:
        raise IP2PError(
            f"The shipped toy model is missing its {' and '.join(missing)} ({SHIPPED_MODEL}), so config:toy has no "
            f"pretrained parts to train with. Reinstall comfyui-ip2p, or build a toy base with its own VAE: "
            f"ip2p demo --train --out DIR."
        )
    parts = {
        name: cls.from_pretrained(SHIPPED_MODEL / name, use_safetensors=True).eval() for name, cls in classes.items()
    }
    return parts, "+".join(model_hash(SHIPPED_MODEL / name) for name in classes)


# --- the base model ---------------------------------------------------------------------------------

WORD_EMBEDDING_SCALE = 10.0  # the random text encoder's token embeddings × this (see the module doc)


def random_toy_model(seed: int = 0):
    """The toy architecture with random weights (seed ``seed``) and word embeddings scaled by
    :data:`WORD_EMBEDDING_SCALE`, so the frozen text encoder tells the toy words apart plainly."""
    model = build_random_model(TOY_SIZE, in_channels=8, seed=seed)
    with torch.no_grad():
        model.text_encoder.get_input_embeddings().weight.mul_(WORD_EMBEDDING_SCALE)
    return model


METRICS_FILE = "toy_vae.json"  # written beside the diffusers components: how the VAE was trained


def build_toy_base(
    out_dir: str | os.PathLike,
    *,
    vae_steps: int = VAE_STEPS,
    seed: int = 0,
    batch_size: int = VAE_BATCH,
    heldout: int = VAE_HELDOUT_EXAMPLES,
    progress: bool = True,
) -> Path:
    """Build the toy InstructPix2Pix model, pretrain its VAE, and save it as a diffusers folder.

    The UNet (8 input channels) and the text encoder keep their random weights (seed ``seed``,
    :func:`random_toy_model`),
    the tokenizer is the toy vocabulary, the VAE starts nearly deterministic
    (:func:`start_nearly_deterministic_`) and is trained by :func:`pretrain_vae`. The folder is
    written atomically, then its :data:`METRICS_FILE` (the VAE step's metrics). This folder is what
    the trainer fine-tunes (``model.base``).
    """
    from .export import save_diffusers

    model = random_toy_model(seed)
    start_nearly_deterministic_(model.vae)
    metrics = pretrain_vae(
        model.vae, steps=vae_steps, batch_size=batch_size, seed=seed, heldout=heldout, progress=progress
    )
    folder = save_diffusers(model, out_dir)
    with atomic_file(folder / METRICS_FILE) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder

"""Helpers shared by the headless editor tests (imported by the test modules, not a conftest)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

IMAGE_SIZE = 64  # the tiny VAE downsamples ×2: 64 px images are 32 px latents


def make_image(batch: int = 1, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE, seed: int = 1) -> torch.Tensor:
    """A smooth random RGB image batch in [0, 1] (smooth, so resizing it is well behaved)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, height // 8), max(2, width // 8), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


@dataclass
class UNetCalls:
    """What each UNet forward received: batch rows, timestep, text embeddings, channel-stacked input."""

    rows: list[int] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    text: list[torch.Tensor] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)


@contextmanager
def record_unet(unet):
    """Record every forward call of ``unet`` (a forward pre-hook; the call itself is unchanged)."""
    calls = UNetCalls()

    def hook(module, args, kwargs):
        sample, timestep = args[0], args[1] if len(args) > 1 else kwargs["timestep"]
        calls.rows.append(sample.shape[0])
        calls.timesteps.append(float(torch.as_tensor(timestep).flatten()[0]))
        calls.text.append(kwargs["encoder_hidden_states"].detach().clone())
        calls.inputs.append(sample.detach().clone())

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()

"""The ComfyUI library host works: ComfyUI itself loads and samples our random InstructPix2Pix checkpoint.

Everything here is ComfyUI's own code path (no node of ours): if these fail, the host set-up is
broken, not the pack.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

STEPS = 2
SIZE = 64  # pixels; the latent is SIZE // 8


@pytest.fixture(scope="module")
def native(sd15_ip2p_checkpoint):
    """ComfyUI's own load of the checkpoint: (model patcher, clip, vae)."""
    import comfy.sd

    model, clip, vae = comfy.sd.load_checkpoint_guess_config(
        str(sd15_ip2p_checkpoint), output_vae=True, output_clip=True, embedding_directory=None
    )[:3]
    yield SimpleNamespace(model=model, clip=clip, vae=vae)


def _encode(clip, text: str) -> list:
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def _with_image(conditioning: list, image_latent: torch.Tensor) -> list:
    return [[cond, {**options, "concat_latent_image": image_latent}] for cond, options in conditioning]


def _sample_native_ip2p(native, pixels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The native InstructPix2Pix route: 3 conds, Guider_DualCFG, SamplerCustomAdvanced, euler."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG, Noise_RandomNoise, SamplerCustomAdvanced

    image_latent = native.vae.encode(pixels)
    instruction, empty = _encode(native.clip, "make it red"), _encode(native.clip, "")
    guider = Guider_DualCFG(native.model)
    guider.set_conds(_with_image(instruction, image_latent), _with_image(empty, image_latent), empty)
    guider.set_cfg(7.5, 1.5)
    sigmas = comfy.samplers.calculate_sigmas(native.model.get_model_object("model_sampling"), "normal", STEPS)
    latent = {"samples": torch.zeros_like(image_latent)}
    output, _ = SamplerCustomAdvanced().sample(
        Noise_RandomNoise(seed), guider, comfy.samplers.sampler_object("euler"), sigmas, latent
    )
    return output["samples"]


@pytest.fixture(scope="module")
def progress_and_sample(native):
    """One native sample of a random image, with the progress updates ComfyUI's ProgressBar reported."""
    import comfy.utils

    updates = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kwargs: updates.append((value, total)))
    try:
        pixels = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(1))
        samples = _sample_native_ip2p(native, pixels)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    return SimpleNamespace(updates=updates, samples=samples, pixels=pixels)


def test_comfy_detects_our_checkpoint_as_sd15_instructpix2pix(native):
    import comfy.model_base

    assert type(native.model.model) is comfy.model_base.SD15_instructpix2pix


def test_comfy_tokenizes_with_the_real_clip_vocabulary(native, comfy_host):
    vocab = json.loads((comfy_host.library / "comfy" / "sd1_tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    ids = [token for token, _weight in native.clip.tokenize("make it red")["l"][0]]
    assert ids[:5] == [49406, vocab["make</w>"], vocab["it</w>"], vocab["red</w>"], 49407]


def test_native_dual_cfg_sampling_returns_a_finite_latent_of_the_image_latent_shape(progress_and_sample):
    samples = progress_and_sample.samples
    assert samples.shape == (1, 4, SIZE // 8, SIZE // 8)
    assert torch.isfinite(samples).all()


def test_native_sampling_depends_on_the_input_image(native, progress_and_sample):
    other = _sample_native_ip2p(native, 1.0 - progress_and_sample.pixels)
    assert not torch.allclose(other, progress_and_sample.samples)


def test_native_sampling_reports_progress_once_per_step(progress_and_sample):
    assert progress_and_sample.updates == [(step, STEPS) for step in range(1, STEPS + 1)]

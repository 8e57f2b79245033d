"""Both sampling paths agree: the ComfyUI node and the headless editor, same checkpoint, same start.

ComfyUI and diffusers seed differently, so the check passes the starting noise and the sigmas
explicitly. The sampler is deterministic (Euler). Tolerance: 0.5/255 per pixel (measured 0.04/255
on ComfyUI of 2024-11); both sides run in float32 from the same fp16 weights, and what differs is
the order of floating-point operations (batched branches, attention kernels, ComfyUI's casting of
the fp16 text encoder).
"""

from __future__ import annotations

import pytest
import torch

STEPS = 3
SIZE = 64
TOLERANCE = 0.5 / 255  # measured: 0.04/255


@pytest.fixture(scope="module")
def comfy_result(pack, sd15_ip2p_checkpoint):
    """The node's edit, with the noise and sigmas it used."""
    import comfy.sample
    import comfy.samplers

    nodes = pack.nodes
    model, clip, vae = nodes.IP2PCheckpointLoader.execute(sd15_ip2p_checkpoint.name)
    image = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(7))
    edited, latent = nodes.IP2PKSampler.execute(
        model=model, vae=vae, image=image, instruction="make it red", negative="", seed=11, steps=STEPS,
        text_cfg=7.5, image_cfg=1.5, sampler_name="euler", scheduler="normal", denoise=1.0, resize="keep",
        max_side=512, clip=clip,
    )  # fmt: skip
    noise = comfy.sample.prepare_noise(torch.zeros_like(latent["samples"]), 11)  # the node's own draw
    sigmas = comfy.samplers.KSampler(model, steps=STEPS, device="cpu", sampler="euler", scheduler="normal").sigmas
    del model, clip, vae
    return image, edited, noise, sigmas


@pytest.mark.numerics
def test_the_node_and_the_headless_editor_give_the_same_edit(comfy_result, sd15_ip2p_checkpoint):
    from ip2p.headless.editor import EditSettings, edit
    from ip2p.headless.loading import load_edit_model

    image, edited, noise, sigmas = comfy_result
    model = load_edit_model(sd15_ip2p_checkpoint)
    settings = EditSettings(
        instruction="make it red", steps=STEPS, text_cfg=7.5, image_cfg=1.5, sampler="euler", resize="keep"
    )
    headless = edit(model, image.movedim(-1, 1), settings, noise=noise, sigmas=sigmas, progress=False)
    difference = (headless.movedim(1, -1) - edited.float()).abs().max().item()
    assert difference <= TOLERANCE, f"max per-pixel difference {difference * 255:.2f}/255"

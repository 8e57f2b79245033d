"""A LoRA adapter written by the trainer's export path loads in ComfyUI's own LoRA loader and means the same there.

The adapter (rank 4 on every attention projection, and conv_in as a LoRA) is built on the random
SD 1.5-architecture model with the trainer's modules and written by the trainer's adapter writer;
its up weights are set to random non-zero values (training SD 1.5 on a CPU is too slow to get there).
ComfyUI applies it with ``comfy.sd.load_lora_for_models``; a 2-step Euler edit through the pack's
IP2PKSampler then equals the edit of the model merged by ``ip2p lora merge`` and the headless edit
with the adapter merged, within the cross-backend tolerance, and differs clearly from the base's.
A second adapter with a fully trained conv_in (``diffusion_model.input_blocks.0.0.diff`` /
``.diff_b``) loads with every key mapped too, and ComfyUI adds strength × the difference.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from tests.comfy_lib.test_cross_backend import TOLERANCE  # 0.5/255: the same bar as the plain edit

STEPS = 2
SIZE = 64
SEED = 11
RANK = 4
STRENGTH = 0.5  # the fully trained conv_in's difference is scaled by the strength too
MIN_EFFECT = 16 / 255  # the adapter must move some pixel by more than this (measured 37/255 with up weights of std 0.1)


@pytest.fixture(scope="module")
def trained_adapters(sd15_ip2p_checkpoint):
    """{module path: (down, up, scale)} from the trainer's modules: rank 4, conv_in as a LoRA, non-zero ups."""
    from ip2p_train import lora as train_lora

    from ip2p.headless.loading import load_edit_model

    unet = load_edit_model(sd15_ip2p_checkpoint).unet
    train_lora.add_lora(unet, rank=RANK, alpha=float(RANK), conv_in="lora")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, train_lora.LORA_LAYERS):
                module.lora_up.weight.normal_(0.0, 0.1, generator=generator)
    _, adapters = train_lora.split_state(unet, dict(unet.state_dict()))
    return adapters


@pytest.fixture(scope="module")
def adapter(comfy_host, trained_adapters):
    """The adapter file (conv_in as a LoRA), in the ``loras`` folder, written by the trainer's adapter writer."""
    from ip2p_train import lora as train_lora

    path = comfy_host.folder("loras") / "ip2p_test_lora.safetensors"
    tensors = train_lora.adapter_tensors(trained_adapters, None)
    return train_lora.save_adapter(path, tensors, {"rank": str(RANK), "alpha": str(RANK)})


@pytest.fixture(scope="module")
def full_conv_in_adapter(comfy_host, trained_adapters):
    """(file, (weight difference, bias difference)): the attention LoRAs plus a fully trained conv_in."""
    from ip2p_train import lora as train_lora

    down, up, _ = trained_adapters["conv_in"]
    generator = torch.Generator().manual_seed(5)
    weight = 0.05 * torch.randn(up.shape[0], *down.shape[1:], generator=generator)
    bias = 0.05 * torch.randn(up.shape[0], generator=generator)
    attention = {path: a for path, a in trained_adapters.items() if path != "conv_in"}
    path = comfy_host.folder("loras") / "ip2p_test_lora_full_conv_in.safetensors"
    tensors = train_lora.adapter_tensors(attention, (weight, bias))
    return train_lora.save_adapter(path, tensors, {"rank": str(RANK), "conv_in": "full"}), (weight, bias)


@contextlib.contextmanager
def _logged_warnings():
    """The messages of every warning logged inside the block (ComfyUI logs unmapped LoRA keys as warnings)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    messages: list[str] = []
    try:
        yield messages
    finally:
        logging.getLogger().removeHandler(handler)
        messages += [r.getMessage() for r in records]


def _not_loaded(messages: list[str]) -> list[str]:
    return [m for m in messages if "lora key not loaded" in m or "NOT LOADED" in m]


@pytest.fixture(scope="module")
def merged_checkpoint(comfy_host, sd15_ip2p_checkpoint, adapter):
    """``ip2p lora merge`` of the base and the adapter, in the ``checkpoints`` folder (float32)."""
    from ip2p.cli.main import main

    out = comfy_host.folder("checkpoints") / "sd15_ip2p_random_merged.safetensors"
    argv = ["lora", "merge", "--model", str(sd15_ip2p_checkpoint), "--lora", str(adapter), "--out", str(out), "-q"]
    assert main(argv) == 0
    return out


def _comfy_edit(pack, model, clip, vae, image):
    edited, latent = pack.nodes.IP2PKSampler.execute(
        model=model, vae=vae, image=image, instruction="make it red", negative="", seed=SEED, steps=STEPS,
        text_cfg=7.5, image_cfg=1.5, sampler_name="euler", scheduler="normal", denoise=1.0, resize="keep",
        max_side=512, clip=clip,
    )  # fmt: skip
    return edited.float(), latent["samples"]


@pytest.fixture(scope="module")
def comfy_edits(pack, sd15_ip2p_checkpoint, merged_checkpoint, adapter):
    """The edits of the base, the base with the adapter applied by ComfyUI, and the merged model; the log."""
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.utils

    image = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(7))
    model, clip, vae = pack.nodes.IP2PCheckpointLoader.execute(sd15_ip2p_checkpoint.name)
    base = _comfy_edit(pack, model, clip, vae, image)
    state = comfy.utils.load_torch_file(str(adapter), safe_load=True)
    with _logged_warnings() as warnings:
        lora_model, lora_clip = comfy.sd.load_lora_for_models(model, clip, state, 1.0, 0)
    patched = len(lora_model.patches)
    with_lora = _comfy_edit(pack, lora_model, lora_clip, vae, image)
    noise = comfy.sample.prepare_noise(torch.zeros_like(with_lora[1]), SEED)
    sigmas = comfy.samplers.KSampler(model, steps=STEPS, device="cpu", sampler="euler", scheduler="normal").sigmas
    del model, clip, lora_model, lora_clip
    merged_model, merged_clip, merged_vae = pack.nodes.IP2PCheckpointLoader.execute(merged_checkpoint.name)
    merged = _comfy_edit(pack, merged_model, merged_clip, merged_vae, image)
    return {
        "image": image, "base": base, "lora": with_lora, "merged": merged, "noise": noise, "sigmas": sigmas,
        "warnings": warnings, "patched": patched, "keys": len(state),
    }  # fmt: skip


def test_comfyui_loads_every_key_of_the_adapter(comfy_edits):
    assert not _not_loaded(comfy_edits["warnings"])
    assert comfy_edits["patched"] == comfy_edits["keys"] // 3  # one weight patched per down/up/alpha triple


@pytest.mark.numerics
def test_the_adapter_in_comfyui_equals_the_merged_export(comfy_edits):
    lora_pixels, lora_latent = comfy_edits["lora"]
    merged_pixels, merged_latent = comfy_edits["merged"]
    difference = (lora_pixels - merged_pixels).abs().max().item()
    assert difference <= TOLERANCE, f"max per-pixel difference {difference * 255:.3f}/255"
    torch.testing.assert_close(lora_latent, merged_latent, rtol=1e-3, atol=1e-3)


@pytest.mark.numerics
def test_the_adapter_in_comfyui_equals_the_headless_edit_with_lora(comfy_edits, sd15_ip2p_checkpoint, adapter):
    from ip2p.headless.editor import EditSettings, edit
    from ip2p.headless.loading import load_edit_model
    from ip2p.headless.lora import apply_loras

    model = load_edit_model(sd15_ip2p_checkpoint)
    apply_loras(model, [(adapter, 1.0)])
    settings = EditSettings(
        instruction="make it red", steps=STEPS, text_cfg=7.5, image_cfg=1.5, sampler="euler", resize="keep"
    )
    image = comfy_edits["image"]
    headless = edit(model, image.movedim(-1, 1), settings, noise=comfy_edits["noise"], sigmas=comfy_edits["sigmas"],
                    progress=False).movedim(1, -1)  # fmt: skip
    difference = (headless - comfy_edits["lora"][0]).abs().max().item()
    assert difference <= TOLERANCE, f"max per-pixel difference {difference * 255:.3f}/255"


def test_the_adapter_clearly_changes_the_edit(comfy_edits):
    effect = (comfy_edits["lora"][0] - comfy_edits["base"][0]).abs().max().item()
    assert effect > MIN_EFFECT, f"the adapter moved pixels by at most {effect * 255:.2f}/255"


def test_comfyui_adds_a_fully_trained_conv_in_as_its_weight_and_bias_difference(
    pack, sd15_ip2p_checkpoint, full_conv_in_adapter
):
    import comfy.lora
    import comfy.sd
    import comfy.utils

    path, differences = full_conv_in_adapter
    model, clip, _ = pack.nodes.IP2PCheckpointLoader.execute(sd15_ip2p_checkpoint.name)
    state = comfy.utils.load_torch_file(str(path), safe_load=True)
    with _logged_warnings() as warnings:
        lora_model, _ = comfy.sd.load_lora_for_models(model, clip, state, STRENGTH, 0)
    assert not _not_loaded(warnings)
    conv_in = model.model.diffusion_model.input_blocks[0][0]
    for name, difference in zip(("weight", "bias"), differences, strict=True):
        key = f"diffusion_model.input_blocks.0.0.{name}"
        base = getattr(conv_in, name).detach().float()
        patched = comfy.lora.calculate_weight(lora_model.patches[key], base.clone(), key)
        torch.testing.assert_close(patched, base + STRENGTH * difference, rtol=1e-6, atol=1e-6, msg=key)

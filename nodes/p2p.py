"""Prompt-to-Prompt in ComfyUI: the core's controller as an attention patch on a cloned MODEL.

Both captions of every pair are rows of *one* conditioning entry (``[caption 0, caption 1]``),
and the latent batch is laid out pair by pair, caption 0 then caption 1, so ComfyUI's tiling of
the conditioning over the batch puts each caption on its own rows. ``calc_cond_batch`` may run
the cond and uncond entries together or apart and in any order when memory is short, but never
splits an entry: each attention call therefore holds whole chunks of ``2 × pairs`` rows, and
``cond_or_uncond`` says which branch each chunk is. :class:`PairGuider` puts the rest of the
metadata — the controller, the number of pairs and the step fraction — into
``transformer_options`` before every model call, so the patch never counts calls.

The user's own patches (LoRAs, other attention patches on other layers) stay on the clone; a
MODEL that already replaces self- or cross-attention is refused, since only one replacement can
run per layer.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import comfy.samplers
import torch

from ..ip2p import p2p
from ..ip2p.errors import IP2PError
from ..ip2p.p2p import COND, CROSS, SELF, UNCOND, Controller, LayerInfo, RowRoles

SESSION_KEY = "ip2p_p2p"  # the transformer_options entry our guider sets for the patch
PLACES = {"input": "down", "middle": "mid", "output": "up"}
ATTENTION_SLOTS = {SELF: "attn1", CROSS: "attn2"}
DETERMINISTIC_SAMPLERS = ("uni_pc", "uni_pc_bh2")  # not k-diffusion functions, and they draw no noise


@dataclass(frozen=True)
class P2PStep:
    """What the patch needs at one model call: the controller, the pairs in each chunk, the step fraction."""

    controller: Controller
    pairs: int
    step: float


def _transformer_blocks(diffusion_model) -> list[tuple[str, int, int]]:
    """(block name, block id, transformer index) of every transformer block, in the model's order."""
    found = []
    stages = (
        ("input", diffusion_model.input_blocks),
        ("middle", [diffusion_model.middle_block]),
        ("output", diffusion_model.output_blocks),
    )
    for name, blocks in stages:
        for block_id, block in enumerate(blocks):
            for module in block:
                for index, _ in enumerate(getattr(module, "transformer_blocks", ())):
                    found.append((name, block_id, index))
    return found


class P2PAttention:
    """One layer's attention replacement: ComfyUI's (batch, tokens, heads·dim) q/k/v through :func:`p2p.attend`."""

    def __init__(self, layer: LayerInfo) -> None:
        self.layer = layer

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        batch = q.shape[0]
        q, k, v = (t.reshape(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
        state = extra_options.get(SESSION_KEY)
        if state is None:  # the model is called outside a pair sampler: plain attention
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            out = p2p.attend(
                q, k, v, state.controller, self.layer, state.step, chunk_roles(state, extra_options, batch)
            )
        return out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1])


def chunk_roles(state: P2PStep, extra_options: dict, batch: int) -> RowRoles:
    """The row roles of one attention call, from ComfyUI's ``cond_or_uncond`` chunk list."""
    chunks = [COND if c == 0 else UNCOND for c in extra_options.get("cond_or_uncond", [0])]
    expected = len(chunks) * 2 * state.pairs
    if batch != expected:
        raise IP2PError(
            f"Prompt-to-Prompt expected {expected} rows ({len(chunks)} conditioning chunk(s) × {state.pairs} pair(s) "
            f"× 2 captions) in an attention call but got {batch}. Another node changed the batch: sample pairs "
            "with 'InstructPix2Pix Pair Generator' only."
        )
    return RowRoles.grid(state.pairs, chunks)


def patch_model(model_patcher):
    """A clone of ``model_patcher`` whose self- and cross-attention layers run :class:`P2PAttention`."""
    clone = model_patcher.clone()
    replaced = clone.model_options.get("transformer_options", {}).get("patches_replace", {})
    blocks = _transformer_blocks(clone.model.diffusion_model)
    for kind, slot in ATTENTION_SLOTS.items():
        taken = replaced.get(slot, {})
        if any(key in taken or key[:2] in taken for key in blocks):
            raise IP2PError(
                f"The MODEL already has an {slot} attention replacement (another node's patch), and Prompt-to-Prompt "
                "must replace that attention itself. Connect the model before that patch."
            )
        for index, (name, block_id, transformer_index) in enumerate(blocks):
            layer = LayerInfo(kind, f"{name}.{block_id}.{transformer_index}.{slot}", index, PLACES[name])
            setter = clone.set_model_attn1_replace if kind == SELF else clone.set_model_attn2_replace
            setter(P2PAttention(layer), name, block_id, transformer_index)
    return clone


class PairGuider(comfy.samplers.CFGGuider):
    """Classifier-free guidance at each pair's own scale, with the Prompt-to-Prompt metadata set per call.

    ``positive``: one entry holding both captions as rows; ``negative``: the empty prompt.
    ``scales``: one cfg per latent row. ``sigmas``: the schedule being sampled, to know each call's step.
    """

    def set_pairs(self, controller: Controller, pairs: int, scales: torch.Tensor, sigmas: torch.Tensor) -> None:
        self.controller, self.pairs, self.scales = controller, pairs, scales
        self.schedule = sigmas[:-1].float().cpu()
        self.cfg = float(scales.max())  # read by hooks that look at guider.cfg

    def step_index(self, sigma: torch.Tensor) -> int:
        """The schedule step whose interval holds ``sigma`` (intermediate calls of 2nd-order samplers included)."""
        value = float(sigma.flatten()[0])
        reached = (self.schedule >= value * (1 - 1e-5)).nonzero()
        return int(reached[-1]) if len(reached) else 0

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI's signature)
        state = P2PStep(self.controller, self.pairs, p2p.step_fraction(self.step_index(timestep), len(self.schedule)))
        options = {
            **model_options,
            "transformer_options": {**model_options.get("transformer_options", {}), SESSION_KEY: state},
        }
        positive, negative = self.conds.get("positive"), self.conds.get("negative")
        with_text, without_text = comfy.samplers.calc_cond_batch(
            self.inner_model, [positive, negative], x, timestep, options
        )
        scales = self.scales.to(device=x.device, dtype=x.dtype)
        return comfy.samplers.cfg_function(
            self.inner_model, with_text, without_text, scales, x, timestep, model_options=options, cond=positive, uncond=negative
        )  # fmt: skip


def pair_sampler(sampler_name: str, noise_sampler):
    """ComfyUI's sampler ``sampler_name`` drawing its per-step noise from ``noise_sampler``.

    Samplers that draw noise of their own (without a ``noise_sampler`` argument) are refused: the two
    images of a pair would get different noise. Deterministic ones need none and are accepted.
    """
    sampler = comfy.samplers.sampler_object(sampler_name)
    function = getattr(sampler, "sampler_function", None)
    if function is None:
        if sampler_name in DETERMINISTIC_SAMPLERS:
            return sampler
        raise IP2PError(_refusal(sampler_name))
    parameters = inspect.signature(function).parameters
    if "noise_sampler" in parameters:
        sampler.extra_options = {**sampler.extra_options, "noise_sampler": noise_sampler}
        return sampler
    if "eta" in parameters:
        raise IP2PError(_refusal(sampler_name))
    return sampler


def _refusal(sampler_name: str) -> str:
    return (
        f"The sampler {sampler_name!r} draws its own random noise at each step, so the two images of a pair could not "
        "share it. Choose euler_ancestral (the paper's), another ancestral or SDE sampler, or a deterministic one "
        "such as euler or dpmpp_2m."
    )


class PairNoise:
    """Per-pair noise: a CPU generator per pair seeded with its seed; both rows of a pair get its draws.

    The draws are those of the headless generator (one generator per image, seeded with the pair's
    seed), so both hosts start from, and step with, the same noise.
    """

    def __init__(self, seeds: list[int], shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        self.generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        self.shape, self.device = shape, device

    def draw(self) -> torch.Tensor:
        rows = [torch.randn(self.shape, generator=g) for g in self.generators]
        return torch.stack(rows).repeat_interleave(2, dim=0)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        return self.draw().to(self.device)

"""The data engine's first two nodes: a prompt source and the Prompt-to-Prompt pair generator.

``IP2P_PROMPTS`` is a list of (index in the source, :class:`PromptTriple`); ``IP2P_PAIRS`` a list
of :class:`GeneratedPair`, one per row of the IMAGE batches beside it. Both are plain Python
objects, so any node can make or read them.
"""

from __future__ import annotations

import os

import comfy.model_management
import comfy.samplers
import torch

from ..ip2p.errors import IP2PError
from ..ip2p.p2p import PaperP2P
from ..ip2p.pairs import GeneratedPair, check_range, sample_plan
from ..ip2p.prompts import read_prompts
from . import host
from .conditioning import encode_text
from .inputs import CATEGORY, sampler_inputs
from .p2p import PairGuider, PairNoise, pair_sampler, patch_model

PROMPTS, PAIRS = "IP2P_PROMPTS", "IP2P_PAIRS"
ONE_PER_RUN, ALL = "one per run", "all"


def prompts_path(name: str) -> str:
    """An absolute path as given; a relative one under ComfyUI's input folder."""
    path = os.path.expanduser(name.strip())
    if not path:
        raise IP2PError("No prompt file given: type the path of a .jsonl, .csv or template file.")
    root = host.input_directory()
    return path if os.path.isabs(path) or root is None else os.path.join(root, path)


class IP2PPromptSource:
    NODE_ID = "IP2PPromptSource"
    DISPLAY_NAME = "InstructPix2Pix Prompt Source"
    DESCRIPTION = (
        "Reads (input caption, instruction, edited caption) triples from a .jsonl (the paper's keys), .csv or "
        "template file. 'one per run' gives the triple at 'index'; set the index to increment and queue N runs "
        "to walk the file. 'all' gives every triple at once (small sets)."
    )
    CATEGORY = f"{CATEGORY}/dataset"
    FUNCTION = "execute"
    RETURN_TYPES = (PROMPTS, "STRING", "STRING", "STRING", "INT")
    RETURN_NAMES = ("prompts", "input_caption", "instruction", "edited_caption", "count")
    OUTPUT_TOOLTIPS = (
        "The chosen triples with their index in the file.",
        "The first chosen triple's input caption.",
        "Its instruction.",
        "Its edited caption.",
        "How many triples the file holds (after dropping duplicates).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompts_file": (
                    "STRING",
                    {"default": "prompts.jsonl", "tooltip": "Absolute path, or relative to ComfyUI's input folder."},
                ),
                "mode": (
                    [ONE_PER_RUN, ALL],
                    {"default": ONE_PER_RUN, "tooltip": "One triple per queued run (at index), or all at once."},
                ),
                "index": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFF,
                        "control_after_generate": True,
                        "tooltip": "Which triple ('one per run'). Increment + queue N walks the file.",
                    },
                ),
            }
        }

    @classmethod
    def IS_CHANGED(cls, prompts_file, mode, index):
        try:
            stat = os.stat(prompts_path(prompts_file))
        except (OSError, IP2PError):
            return float("nan")  # never cached: the error shows on every run until the file is there
        return f"{stat.st_mtime_ns}:{stat.st_size}:{mode}:{index}"

    @classmethod
    def execute(cls, prompts_file, mode, index):
        triples = read_prompts(prompts_path(prompts_file))
        if mode == ALL:
            chosen = list(enumerate(triples))
        elif index < len(triples):
            chosen = [(index, triples[index])]
        else:
            raise IP2PError(
                f"index {index} is past the last prompt of {triples.source} ({len(triples)} triple(s), indices 0 to "
                f"{len(triples) - 1}): the file is done. Set index back to 0 to start again."
            )
        first = chosen[0][1]
        return chosen, first.input_caption, first.instruction, first.edited_caption, len(triples)


def require_base_model(model_patcher) -> None:
    """Refuse an InstructPix2Pix MODEL where the paper's pair generation needs a text-to-image one."""
    channels = host.unet_in_channels(model_patcher)
    if host.is_ip2p_model(model_patcher) or channels != 4:
        raise IP2PError(
            f"The connected MODEL is an InstructPix2Pix model ({channels} input channels); generating training pairs "
            "needs a base text-to-image model (4 input channels, e.g. Stable Diffusion 1.5) from 'Load Checkpoint'."
        )


def encode_pair(clip, input_caption: str, edited_caption: str) -> list:
    """One conditioning entry whose two rows are the captions, padded to the same number of 77-token chunks."""
    tokens = [clip.tokenize(text) for text in (input_caption, edited_caption)]
    empty = clip.tokenize("")
    for name in tokens[0]:
        chunks = max(len(t[name]) for t in tokens)
        for t in tokens:
            t[name] = t[name] + empty[name][:1] * (chunks - len(t[name]))
    encoded = [clip.encode_from_tokens(t, return_pooled=True) for t in tokens]
    cond = torch.cat([c for c, _ in encoded])
    pooled = [p for _, p in encoded]
    options = {"pooled_output": torch.cat(pooled)} if all(p is not None for p in pooled) else {}
    return [[cond, options]]


@torch.no_grad()
def sample_pairs(patched, conds: tuple[list, list], vae, plan: list[dict], *, steps, size, sampler_name, scheduler,
                 controller=None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One UNet call per step for ``len(plan)`` seeds × 2 captions: the pairs' (input, edited) BHWC images.

    ``patched``: the MODEL from :func:`patch_model`; ``conds``: (:func:`encode_pair`, the empty
    prompt's conditioning). ``plan``: the paper's keys per pair (seed, p2p_threshold, cfg_scale).
    ``controller`` replaces the paper's Prompt-to-Prompt (self-attention shared while the step
    fraction is below p).
    """
    pairs = len(plan)
    controller = controller or PaperP2P([sample["p2p_threshold"] for sample in plan])
    shape = (patched.model.latent_format.latent_channels, size // 8, size // 8)
    noise = PairNoise([sample["seed"] for sample in plan], shape, patched.load_device)
    sigmas = comfy.samplers.KSampler(
        patched, steps=steps, device=patched.load_device, sampler=sampler_name, scheduler=scheduler,
        model_options=patched.model_options,
    ).sigmas  # fmt: skip
    guider = PairGuider(patched)
    guider.set_conds(*conds)
    scales = torch.tensor([sample["cfg_scale"] for sample in plan for _ in (0, 1)]).view(-1, 1, 1, 1)
    guider.set_pairs(controller, pairs, scales, sigmas)
    controller.reset()
    start = noise.draw()
    samples = guider.sample(
        start,
        torch.zeros_like(start),
        pair_sampler(sampler_name, noise),
        sigmas,
        callback=host.step_callback(patched, sigmas.shape[-1] - 1),
        disable_pbar=host.progress_disabled(),
        seed=plan[0]["seed"],
    )
    images = vae.decode(samples.to(comfy.model_management.intermediate_device()))[..., :3]
    return images[0::2], images[1::2]


class IP2PPairGenerator:
    NODE_ID = "IP2PPairGenerator"
    DISPLAY_NAME = "InstructPix2Pix Pair Generator"
    DESCRIPTION = (
        "The paper's data generation: for each prompt triple, samples image pairs (input caption, edited caption) "
        "with a base Stable Diffusion model and Prompt-to-Prompt — same noise, the edited caption's self-attention "
        "taken from the input caption's for a fraction p ~ U(p2p_min, p2p_max) of the steps, cfg ~ U(cfg_min, "
        "cfg_max) per pair. Each pair's seed, p and cfg follow from the run seed and the triple, as in `ip2p generate`."
    )
    CATEGORY = f"{CATEGORY}/dataset"
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "IMAGE", PAIRS)
    RETURN_NAMES = ("input_images", "edited_images", "pairs")
    OUTPUT_TOOLTIPS = (
        "Images of the input captions.",
        "Images of the edited captions, same order.",
        "Each pair's prompt and metadata (seed, p2p_threshold, cfg_scale).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        def fraction(default, tooltip):
            return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": tooltip})

        def cfg(default, tooltip):
            return ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.5, "tooltip": tooltip})

        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A base text-to-image model (SD 1.5 family), not an edit model."}),
                "clip": ("CLIP", {"tooltip": "The base model's text encoder."}),
                "vae": ("VAE", {"tooltip": "The base model's VAE."}),
                "prompts": (PROMPTS, {"tooltip": "From 'InstructPix2Pix Prompt Source'."}),
                "samples": ("INT", {"default": 4, "min": 1, "max": 10000, "tooltip": "Pairs per prompt (paper: 100)."}),
                "seeds_per_call": (
                    "INT",
                    {"default": 4, "min": 1, "max": 256, "tooltip": "Pairs sampled together in one model call."},
                ),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFFFFFFFFFF,
                        "control_after_generate": True,
                        "tooltip": "Run seed: with the prompt it fixes every pair's seed, p and cfg (keep it fixed).",
                    },
                ),
                "steps": ("INT", {"default": 100, "min": 1, "max": 10000, "tooltip": "Sampling steps (paper: 100)."}),
                "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64, "tooltip": "Image side."}),
                **sampler_inputs(),
                "p2p_min": fraction(0.1, "Lowest p: the share of steps the edited image copies self-attention."),
                "p2p_max": fraction(0.9, "Highest p (paper: p ~ U(0.1, 0.9))."),
                "cfg_min": cfg(7.5, "Lowest classifier-free guidance scale (paper: U(7.5, 15))."),
                "cfg_max": cfg(15.0, "Highest classifier-free guidance scale."),
            }
        }

    @classmethod
    def execute(cls, model, clip, vae, prompts, samples, seeds_per_call, seed, steps, size, sampler_name, scheduler,
                p2p_min, p2p_max, cfg_min, cfg_max):  # fmt: skip
        require_base_model(model)
        p_range, cfg_range = check_range("p2p", (p2p_min, p2p_max)), check_range("cfg", (cfg_min, cfg_max))
        if size % 8:
            raise IP2PError(f"size is {size}; give a multiple of 8 (64 for SD 1.5 is safest).")
        inputs, edits, records = [], [], []
        plans = [
            (index, triple, sample_plan(triple.key, samples, run_seed=seed, p2p_fraction=p_range, cfg=cfg_range))
            for index, triple in prompts
        ]
        patched = patch_model(model)  # one clone for the run: ComfyUI loads it once
        bar = host.progress_bar(len(plans) * samples)
        for index, triple, plan in plans:
            conds = encode_pair(clip, triple.input_caption, triple.edited_caption), encode_text(clip, "")
            for start in range(0, samples, seeds_per_call):
                host.throw_if_interrupted()
                chunk = plan[start : start + seeds_per_call]
                images0, images1 = sample_pairs(
                    patched, conds, vae, chunk, steps=steps, size=size, sampler_name=sampler_name, scheduler=scheduler
                )
                inputs.append(images0)
                edits.append(images1)
                records += [GeneratedPair(triple, index, dict(sample)) for sample in chunk]
                bar.update(len(chunk))
        return torch.cat(inputs), torch.cat(edits), records

"""Prompt-to-Prompt pairs on diffusers modules: the paper's data generation, headless.

:func:`generate_pairs` samples k seeds × 2 captions with a base Stable Diffusion model in one
UNet forward per step — rows [cond: (seed 0, caption 0), (seed 0, caption 1), …, uncond: the same],
:meth:`ip2p.p2p.RowRoles.grid` — with classifier-free guidance at each pair's own scale. Both images
of a pair start from the same noise and draw the same ancestral noise: every image has its own CPU
``torch.Generator`` seeded with its pair's seed (the headless editor's convention), so the two
generators of a pair stay in lockstep and each image is what it would be in any other batch.

The controller (:class:`ip2p.p2p.PaperP2P` by default) sees the attention through
:class:`P2PAttnProcessor`, installed on every UNet attention layer with that layer's metadata;
the sampling loop sets the step fraction and row roles before each UNet call. Layers and steps
the controller leaves alone run ``F.scaled_dot_product_attention`` exactly as diffusers' default
processor does, so Prompt-to-Prompt costs nothing there.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .. import p2p, sizing
from ..devices import MAX_SEED
from ..errors import IP2PError
from ..guidance import check_scale
from ..p2p import CROSS, SELF, Controller, LayerInfo, OriginalP2P, PaperP2P, RowRoles
from . import schedulers
from .components import EditModel
from .editor import check_finite_result, decode_latents, encode_text, start_sigma_scale

logger = logging.getLogger(__name__)

BASE_IN_CHANNELS = 4


@dataclass
class P2PSession:
    """What the attention processors read at each call: the controller, and what the sampling loop
    set for the coming UNet forward (its step fraction and the roles of its batch rows)."""

    controller: Controller | None
    layers: list[LayerInfo] = field(default_factory=list)
    rows: RowRoles | None = None  # None: the UNet is called outside a P2P loop, attention is left alone
    step: float = 0.0


class P2PAttnProcessor:
    """diffusers' default attention (``AttnProcessor2_0``) with the core's :func:`ip2p.p2p.attend`
    in place of the kernel call; ``layer`` is fixed at install time."""

    def __init__(self, layer: LayerInfo, session: P2PSession) -> None:
        self.layer = layer
        self.session = session

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        session = self.session
        if session.rows is None or session.controller is None:
            hidden_states = torch.nn.functional.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
        else:
            hidden_states = p2p.attend(
                query, key, value, session.controller, self.layer, session.step, session.rows, mask=attention_mask
            )

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _place(name: str) -> str:
    for prefix, place in (("down_blocks", "down"), ("mid_block", "mid"), ("up_blocks", "up")):
        if name.startswith(prefix):
            return place
    return ""


def attention_layers(unet) -> dict[str, LayerInfo]:
    """Every attention layer of a diffusers UNet: processor name → its metadata (kind, name, index, place)."""
    layers = {}
    for index, processor_name in enumerate(unet.attn_processors):
        name = processor_name.removesuffix(".processor")
        module = unet.get_submodule(name)
        kind = CROSS if getattr(module, "is_cross_attention", False) else SELF
        layers[processor_name] = LayerInfo(kind, name, index, _place(name))
    return layers


@contextmanager
def p2p_attention(unet, controller: Controller | None) -> Iterator[P2PSession]:
    """Install :class:`P2PAttnProcessor` on every attention layer of ``unet``; restore the previous
    processors on exit. The caller sets ``session.step`` and ``session.rows`` before each forward."""
    previous = unet.attn_processors
    session = P2PSession(controller)
    layers = attention_layers(unet)
    session.layers = list(layers.values())
    unet.set_attn_processor({name: P2PAttnProcessor(layer, session) for name, layer in layers.items()})
    try:
        yield session
    finally:
        unet.set_attn_processor(previous)


@dataclass
class PairBatch:
    """``images``: (pairs, 2, 3, H, W) in [0, 1], image 0 from the input caption, image 1 from the
    edited one. ``metadata``: one dict per pair in the paper's keys (seed, p2p_threshold, cfg_scale)."""

    images: torch.Tensor
    metadata: list[dict]


def _scheduler_takes_generator(scheduler) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters


def _generator_samplers() -> list[str]:
    """The sampler names whose diffusers scheduler draws its noise from our generators."""
    names = []
    for name, spec in schedulers.SAMPLERS.items():
        try:
            cls = schedulers._diffusers_class(spec.scheduler_class)
        except IP2PError:  # pragma: no cover - depends on the diffusers version
            continue
        if _scheduler_takes_generator(cls):
            names.append(name)
    return names


def make_pair_scheduler(model: EditModel, sampler, scheduler: str, steps: int):
    """A fresh scheduler with ``steps`` timesteps set: a ComfyUI sampler name (or an A1111 alias such as
    "euler_a") on the model's schedule, or a diffusers scheduler instance (copied from its config).

    Refused: schedulers whose ``step()`` takes no generator — the pair's shared per-step noise and
    the seed's reproducibility rest on passing the generators to every step.
    """
    if isinstance(sampler, str):
        name = schedulers._normalise(sampler)
        schedulers.check_names(name if name in schedulers.SAMPLERS else sampler, scheduler)
        instance = schedulers.make_scheduler(model.scheduler_config, name, scheduler)
        label = f"sampler {sampler!r}"
    elif hasattr(sampler, "step") and hasattr(sampler, "set_timesteps") and hasattr(sampler, "config"):
        instance, name = type(sampler).from_config(sampler.config), type(sampler).__name__
        label = f"scheduler {name}"
    else:
        raise IP2PError(f"sampler must be a sampler name such as 'euler_a' or a diffusers scheduler, got {sampler!r}.")
    if not _scheduler_takes_generator(instance):
        raise IP2PError(
            f"The {label} ({type(instance).__name__}) takes no generator in step(), so the two images of a pair "
            f"could not share their per-step noise reproducibly. Use one that does: "
            f"{', '.join(_generator_samplers())} (the paper's is euler_ancestral)."
        )
    if isinstance(sampler, str):
        schedulers.set_steps(instance, steps, name, scheduler)
    else:
        instance.set_timesteps(steps)
        if hasattr(instance, "set_begin_index"):
            instance.set_begin_index(0)
    return instance


def _check_size(size, factor: int) -> tuple[int, int]:
    """(width, height) from an int or a (width, height) pair, each a multiple of 8 and of the VAE factor."""
    if isinstance(size, int) and not isinstance(size, bool):
        pair = (size, size)
    else:
        pair = tuple(size) if isinstance(size, Sequence) and not isinstance(size, str) else ()
    multiple = max(8, factor)
    valid = len(pair) == 2 and all(isinstance(s, int) and not isinstance(s, bool) for s in pair)
    if not valid or not all(multiple <= s <= sizing.MAX_MAX_SIDE and s % multiple == 0 for s in pair):
        raise IP2PError(
            f"size is {size!r}; give a side (or width, height) that is a multiple of {multiple} from {multiple} to "
            f"{sizing.MAX_MAX_SIDE} (512 for SD 1.5)."
        )
    return pair  # type: ignore[return-value]


def _per_pair(name: str, values, count: int) -> list:
    values = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else [values]
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise IP2PError(f"{name} has {len(values)} values for {count} seeds; give one per seed (or a single one).")
    return values


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="ip2p pairs", unit="step", disable=not enabled, leave=False)


def check_base_model(model: EditModel) -> None:
    """Refuse an InstructPix2Pix model where the paper's data generation needs a text-to-image one."""
    in_channels = model.unet.config.in_channels
    if model.family.is_edit_model or in_channels != BASE_IN_CHANNELS:
        raise IP2PError(
            f"{model.source or 'The model'} is an InstructPix2Pix model ({in_channels} input channels); generating "
            f"training pairs needs a base text-to-image model ({BASE_IN_CHANNELS} input channels, e.g. Stable "
            f"Diffusion 1.5), as the paper used."
        )


@torch.no_grad()
def generate_pairs(
    model: EditModel,
    input_caption: str,
    edited_caption: str,
    seeds: Sequence[int],
    p2p_fractions: Sequence[float] | float | None,
    cfgs: Sequence[float] | float,
    steps: int,
    size: int | tuple[int, int],
    sampler="euler_a",
    *,
    scheduler: str = "normal",
    negative: str = "",
    controller: Controller | None = None,
    sigmas: torch.Tensor | None = None,
    progress: bool = True,
) -> PairBatch:
    """Sample one image pair per seed (input caption, edited caption) with Prompt-to-Prompt.

    ``p2p_fractions`` (one per seed, or one for all): the paper's ``p`` — prompt 1's self-attention
    is prompt 0's while the step fraction (:func:`ip2p.p2p.step_fraction`) is below it. ``cfgs``: the
    classifier-free guidance scale of each pair. ``controller`` replaces the paper's (e.g.
    :func:`original_controller`); ``p2p_fractions`` is then only recorded, and may be None.
    ``model`` must be a base (4-channel) model: an InstructPix2Pix UNet is refused. ``sigmas``
    (``steps`` + 1 values, ComfyUI's conventions) replaces the scheduler's schedule, so the ComfyUI
    node can be compared on the same schedule (euler, euler_ancestral, ddim).
    """
    check_base_model(model)
    for name, text in (("input_caption", input_caption), ("edited_caption", edited_caption), ("negative", negative)):
        if not isinstance(text, str):
            raise IP2PError(f"{name} must be text, got {type(text).__name__}.")
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds):
        raise IP2PError(f"seeds must be one or more whole numbers from 0 to {MAX_SEED}, got {seeds!r}.")
    pairs = len(seeds)
    cfgs = [check_scale("cfg", c) for c in _per_pair("cfgs", cfgs, pairs)]
    if p2p_fractions is None and controller is None:
        raise IP2PError("p2p_fractions is missing; give one per seed (the paper draws p from U(0.1, 0.9)).")
    fractions = (
        [None] * pairs
        if p2p_fractions is None
        else [p2p.check_fraction("p2p_fraction", p) for p in _per_pair("p2p_fractions", p2p_fractions, pairs)]
    )
    if controller is None:
        controller = PaperP2P(fractions)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= schedulers.MAX_STEPS:
        raise IP2PError(f"steps is {steps!r}; give a whole number of sampling steps from 1 to {schedulers.MAX_STEPS}.")
    factor = model.vae_scale_factor
    width, height = _check_size(size, factor)

    unet = model.unet
    device, dtype = unet.device, unet.dtype
    if sigmas is None:
        noise_scheduler = make_pair_scheduler(model, sampler, scheduler, steps)
        timesteps = noise_scheduler.timesteps
    else:
        if len(sigmas) != steps + 1:
            raise IP2PError(f"sigmas has {len(sigmas)} values; a schedule of {steps} steps has {steps + 1}.")
        noise_scheduler = schedulers.explicit_sigma_scheduler(model.scheduler_config, sampler, scheduler)
        timesteps = schedulers.set_sigmas(noise_scheduler, sigmas, device=device)

    captions = encode_text(model, [input_caption, edited_caption]).to(device=device, dtype=dtype)
    no_text = encode_text(model, [negative]).to(device=device, dtype=dtype)
    cond = captions.repeat(pairs, 1, 1)  # pair by pair: caption 0, caption 1
    text_batch = torch.cat([cond, no_text.expand_as(cond)])
    rows = RowRoles.grid(pairs)  # the cond chunk, then the uncond chunk, as text_batch
    latent_rows = RowRoles.latents(pairs)
    scales = torch.tensor([c for c in cfgs for _ in (0, 1)], device=device, dtype=dtype).view(-1, 1, 1, 1)

    # One CPU generator per image, seeded with its pair's seed: the pair's two generators draw the same
    # starting and per-step noise, and each image's noise does not depend on the batch.
    generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds for _ in (0, 1)]
    from diffusers.utils.torch_utils import randn_tensor

    shape = (2 * pairs, model.vae.config.latent_channels, height // factor, width // factor)
    latents = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
    latents = latents * start_sigma_scale(noise_scheduler, sigmas)
    accepted = inspect.signature(noise_scheduler.step).parameters
    step_kwargs = {"generator": generators, **({"eta": 0.0} if "eta" in accepted else {})}

    controller.reset()
    bar = _progress(len(timesteps), progress)
    try:
        with p2p_attention(unet, controller) as session:
            session.rows = rows
            for index, t in enumerate(timesteps):
                session.step = p2p.step_fraction(index, len(timesteps))
                scaled = noise_scheduler.scale_model_input(latents, t)
                model_input = torch.cat([scaled, scaled])  # the cond chunk, then the uncond chunk
                prediction = unet(model_input, t, encoder_hidden_states=text_batch, return_dict=False)[0]
                with_text, without_text = prediction.chunk(2)
                guided = without_text + scales * (with_text - without_text)
                latents = noise_scheduler.step(guided, t, latents, **step_kwargs, return_dict=False)[0]
                latents = controller.after_step(latents, session.step, latent_rows)
                bar.update()
    finally:
        bar.close()

    images = decode_latents(model, latents)
    check_finite_result(images, dtype)
    metadata = [
        {"seed": seed, "p2p_threshold": p, "cfg_scale": cfg}
        for seed, p, cfg in zip(seeds, fractions, cfgs, strict=True)
    ]
    return PairBatch(images.reshape(pairs, 2, *images.shape[1:]), metadata)


# -- Hertz et al.'s edits on a loaded model ---------------------------------------------------------


def caption_tokens(model: EditModel, caption: str) -> list[int]:
    """The caption's token ids with start and end tokens, no padding (truncated as the encoder truncates)."""
    tokenizer = model.tokenizer
    return list(tokenizer(caption, truncation=True, max_length=tokenizer.model_max_length).input_ids)


def _positions(model: EditModel, caption: str, words: str | Sequence[str] | None) -> list[int]:
    words = [] if words is None else [words] if isinstance(words, str) else list(words)
    tokens = caption_tokens(model, caption)
    positions: list[int] = []
    for word in words:
        found = p2p.word_positions(tokens, model.tokenizer(word, add_special_tokens=False).input_ids)
        if not found:
            raise IP2PError(f"The word {word!r} is not in the caption {caption!r}; choose words the caption contains.")
        positions += found
    return positions


def original_controller(
    model: EditModel,
    input_caption: str,
    edited_caption: str,
    edit: str = "replace",
    *,
    reweight: Mapping[str, float] | None = None,
    blend_words: tuple[str | Sequence[str] | None, str | Sequence[str] | None] | None = None,
    blend_options: Mapping | None = None,
    **options,
) -> OriginalP2P:
    """Hertz et al.'s controller for two captions, tokenised by ``model``'s tokenizer.

    ``edit``: "replace" (word swap, equal token counts) or "refine". ``reweight``: {word of the
    edited caption: factor}. ``blend_words``: (words of the input caption, words of the edited
    caption) whose attention region prompt 1 may change (local blend); ``blend_options`` go to
    :class:`ip2p.p2p.LocalBlend`, ``options`` to :class:`ip2p.p2p.OriginalP2P`.
    """
    length = model.tokenizer.model_max_length
    tokens0, tokens1 = caption_tokens(model, input_caption), caption_tokens(model, edited_caption)
    if reweight:
        weights = {pos: w for word, w in reweight.items() for pos in _positions(model, edited_caption, word)}
        options["reweight"] = p2p.equalizer(weights, length)
    if blend_words is not None:
        options["blend"] = p2p.LocalBlend(
            _positions(model, input_caption, blend_words[0]),
            _positions(model, edited_caption, blend_words[1]),
            **dict(blend_options or {}),
        )
    return OriginalP2P.from_tokens(tokens0, tokens1, edit, length=length, **options)

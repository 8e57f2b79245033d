"""The headless editor: InstructPix2Pix on diffusers modules with our dual guidance.

It does what diffusers' ``StableDiffusionInstructPix2PixPipeline`` does, draw for draw: one CPU
``torch.Generator`` per image, each seeded with the seed (the pipeline given ``generator=[g1, g2, …]``;
for one image, the pipeline given one generator), the initial latents drawn first, the same
generators passed to the scheduler's steps. So the same seed with euler / euler_ancestral and
scheduler "normal" gives the pipeline's image, and an image's edit does not depend on its batch.
A result with NaN or inf values is refused (:class:`NonFiniteEditError`), never returned. It differs where the pipeline is wrong for this model: guidance is never
switched off for ``image_cfg < 1`` or ``text_cfg <= 1``, the branches come from
:class:`ip2p.guidance.Guidance` (two or one when a scale is 1), the input-image latent follows
the model family's scaling convention, and the image is sized by :mod:`ip2p.sizing` (by default at
the size the model was trained at, ``unet.sample_size`` × the VAE's factor).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch

from .. import guidance, sizing
from ..devices import MAX_SEED
from ..errors import IP2PError
from ..guidance import Branch, Guidance
from ..model_family import require_edit_model
from . import schedulers
from .components import EditModel

logger = logging.getLogger(__name__)


@dataclass
class EditSettings:
    """Everything that decides an edit besides the model and the images (validated on creation)."""

    instruction: str
    negative: str = ""  # the "no text" conditioning: its embedding stands for ∅ in both unconditioned branches
    steps: int = 100  # the paper's setting
    text_cfg: float = guidance.DEFAULT_TEXT_CFG  # s_T
    image_cfg: float = guidance.DEFAULT_IMAGE_CFG  # s_I
    sampler: str = "euler_ancestral"  # ComfyUI's name; the paper samples with Euler ancestral
    scheduler: str = "normal"  # the model's own timestep spacing
    seed: int = 0
    resize: str = "paper"  # "paper" (long side → max_side, multiples of 64) or "keep"
    max_side: int | None = None  # None: the input's long side, at most the model's own size (512 for SD 1.5)
    max_input_side: int = sizing.DEFAULT_MAX_INPUT_SIDE  # larger inputs are refused

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`IP2PError` naming the first setting that cannot work, and the fix."""
        for name in ("instruction", "negative"):
            if not isinstance(getattr(self, name), str):
                raise IP2PError(f"{name} must be text, got {type(getattr(self, name)).__name__}.")
        if not _is_int(self.steps) or not 1 <= self.steps <= schedulers.MAX_STEPS:
            raise IP2PError(
                f"steps is {self.steps!r}; give a whole number of sampling steps from 1 to {schedulers.MAX_STEPS} "
                f"(the paper uses 100)."
            )
        self.guidance()  # checks both scales
        schedulers.check_names(self.sampler, self.scheduler)
        schedulers.check_steps(self.sampler, self.scheduler, self.steps)  # on SD's schedule; edit() rechecks
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise IP2PError(f"seed is {self.seed!r}; give a whole number from 0 to {MAX_SEED}.")
        if self.resize not in sizing.RESIZE_POLICIES:
            raise IP2PError(
                f"Unknown resize policy {self.resize!r}; choose one of {', '.join(sizing.RESIZE_POLICIES)}."
            )
        if self.max_side is not None:
            if not _is_int(self.max_side) or (self.resize == "paper" and self.max_side < 64):
                raise IP2PError(
                    f"max_side is {self.max_side!r}; the paper policy needs a whole number ≥ 64 (try 512), "
                    f"or none for the model's own size."
                )
            if self.max_side > sizing.MAX_MAX_SIDE:
                raise IP2PError(
                    f"max_side is {self.max_side}; give at most {sizing.MAX_MAX_SIDE}, or none for the model's own "
                    f"size (SD 1.5 models edit best at their own 512)."
                )
        if not _is_int(self.max_input_side) or not sizing.MIN_SIDE <= self.max_input_side <= sizing.MAX_MAX_INPUT_SIDE:
            raise IP2PError(
                f"max_input_side is {self.max_input_side!r}; give a whole number from {sizing.MIN_SIDE} to "
                f"{sizing.MAX_MAX_INPUT_SIDE}."
            )

    def guidance(self) -> Guidance:
        """The two scales as one checked value."""
        return Guidance(self.text_cfg, self.image_cfg)

    @property
    def is_empty(self) -> bool:
        """An empty or blank instruction edits nothing (the input comes back unchanged)."""
        return not self.instruction.strip()

    def for_image(self, model: EditModel, width: int, height: int) -> EditSettings:
        """These settings with ``max_side`` filled in for a ``width`` × ``height`` input when it was left to it
        (None): :func:`default_side`."""
        if self.max_side is not None:
            return self
        return dataclasses.replace(self, max_side=default_side(model, width, height))


def model_max_side(model: EditModel) -> int:
    """The long side ``model`` was trained at: ``unet.sample_size`` × the VAE's factor (512 for SD 1.5, 64 for the
    toy model, see :func:`ip2p.sizing.model_max_side`), at most its family's :attr:`~ip2p.model_family.ModelFamily.max_side`
    (a config claiming a larger ``sample_size`` is not believed)."""
    claimed = sizing.model_max_side(model.unet.config, model.vae.config)
    ceiling = model.family.max_side
    if claimed > ceiling:
        logger.warning(
            "The model's config claims a %d px size; %s models are edited at up to %d px by default (pass --max-side "
            "to choose)",
            claimed,
            model.family.base.upper(),
            ceiling,
        )
    return min(claimed, ceiling)


def default_side(model: EditModel, width: int, height: int) -> int:
    """The paper policy's long side when none is given: the input's own long side rounded up to a multiple of 64
    (at least 64), at most the model's own size (:func:`model_max_side`). A small input is not blown up to 512 px
    of work, and no config can make a 48 px edit run at 4096."""
    return min(model_max_side(model), max(64, math.ceil(max(width, height) / 64) * 64))


class NonFiniteEditError(IP2PError):
    """The edit came out NaN or infinite; ``rows`` are the batch rows affected."""

    def __init__(self, message: str, rows: tuple[int, ...]) -> None:
        super().__init__(message)
        self.rows = rows


def check_finite_result(values: torch.Tensor, dtype: torch.dtype) -> None:
    """Refuse NaN/inf latents or pixels, naming the rows and the likely causes; never write them as an image."""
    bad = ~torch.isfinite(values).flatten(1).all(dim=1)
    if not bad.any():
        return
    rows = tuple(int(i) for i in bad.nonzero().flatten().tolist())
    which = f" (batch rows {', '.join(map(str, rows))})" if values.shape[0] > 1 else ""
    precision = (
        f"or the scales overflow {str(dtype).removeprefix('torch.')}: run in float32 (--dtype float32)"
        if dtype != torch.float32
        else "or the guidance scales are too large for it"
    )
    raise NonFiniteEditError(
        f"The edit came out NaN or infinite{which}: the model's weights likely contain NaN/inf values (check or "
        f"re-download the model file), {precision}. Nothing was written for it.",
        rows,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_images(images: torch.Tensor) -> None:
    """Refuse anything but a (B, 3, H, W) float batch in [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise IP2PError(f"Expected images as a (batch, 3, height, width) tensor, got {shape}. Convert to RGB first.")
    if not images.is_floating_point():
        raise IP2PError(f"Expected float images in [0, 1], got dtype {images.dtype}. Divide 8-bit images by 255.")
    if images.shape[0] == 0:
        raise IP2PError("Expected at least one image, got an empty batch.")
    if not torch.isfinite(images).all():
        raise IP2PError("The images contain NaN or infinite values; pass finite values in [0, 1].")
    low, high = images.min().item(), images.max().item()
    if low < -1e-4 or high > 1 + 1e-4:
        raise IP2PError(f"Expected images in [0, 1], got values from {low:.3g} to {high:.3g}. Rescale them first.")


def encode_text(model: EditModel, texts: list[str]) -> torch.Tensor:
    """CLIP text embeddings as diffusers' pipeline makes them (padded to max length, truncated)."""
    tokenizer, encoder = model.tokenizer, model.text_encoder
    max_length = tokenizer.model_max_length
    tokens = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    untruncated = tokenizer(texts, padding="longest", return_tensors="pt").input_ids
    if untruncated.shape[-1] > max_length:
        logger.warning("The text was truncated to CLIP's %d tokens: %s", max_length, texts)
    device = encoder.device
    mask = tokens.attention_mask.to(device) if getattr(encoder.config, "use_attention_mask", False) else None
    embeddings = encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
    return embeddings.to(dtype=encoder.dtype)


def encode_image_latent(model: EditModel, images: torch.Tensor) -> torch.Tensor:
    """The input-image latent c_I: the VAE posterior's mode, scaled only where the family says so."""
    vae = model.vae
    pixels = (images.to(device=vae.device, dtype=torch.float32) * 2 - 1).to(vae.dtype)
    mode = vae.encode(pixels).latent_dist.mode()
    return model.family.image_latent(mode, model.latent_scaling_factor)


def decode_latents(model: EditModel, latents: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (float32) from final latents, as the pipeline post-processes them."""
    decoded = model.vae.decode(latents / model.latent_scaling_factor, return_dict=False)[0]
    return (decoded / 2 + 0.5).clamp(0, 1).float()


def branch_inputs(
    branches: tuple[Branch, ...], text: torch.Tensor, no_text: torch.Tensor, image_latent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The text embeddings and image latents of every branch, stacked in ``branches`` order.

    "No image" is an all-zeros latent and "no text" the negative prompt's embedding (DESIGN §2).
    """
    no_image = torch.zeros_like(image_latent)
    texts = {Branch.FULL: text, Branch.IMAGE: no_text, Branch.UNCOND: no_text}
    latents = {Branch.FULL: image_latent, Branch.IMAGE: image_latent, Branch.UNCOND: no_image}
    return torch.cat([texts[b] for b in branches]), torch.cat([latents[b] for b in branches])


def _progress(total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the headless extra
        return None
    return tqdm(total=total, desc="ip2p edit", unit="step", disable=not enabled, leave=False)


def _start_latents(
    model: EditModel,
    shape: tuple[int, ...],
    noise: torch.Tensor | None,
    generators: list[torch.Generator],
    dtype,
    device,
) -> torch.Tensor:
    if noise is None:
        from diffusers.utils.torch_utils import randn_tensor

        # The pipeline's own draw: with a list, one (1, C, h, w) draw per image from its own generator
        # (a list of one is drawn exactly as a single generator is).
        return randn_tensor(shape, generator=generators, device=device, dtype=dtype)
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise IP2PError(f"noise must be a tensor of shape {shape} (the unscaled starting latent), got {got}.")
    return noise.to(device=device, dtype=dtype)


@torch.no_grad()
def edit(
    model: EditModel,
    images: torch.Tensor,
    settings: EditSettings,
    *,
    noise: torch.Tensor | None = None,
    sigmas: torch.Tensor | None = None,
    instructions: list[str] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Edit (B, 3, H, W) images in [0, 1] by ``settings.instruction``; returns images in [0, 1].

    The output is at the working size of ``settings.resize`` ("paper": the long side ``settings.max_side``,
    by default the input's own up to the model's, :func:`default_side`) or the input size ("keep").
    ``noise`` replaces the seeded draw of the unscaled N(0, 1) starting latent; ``sigmas`` replaces
    the scheduler's schedule (len = steps + 1, ComfyUI's conventions: the model runs at the
    timestep of the nearest sigma, and the start is noise·√(1 + σ₀²) when σ₀ is the model's σ_max,
    else noise·σ₀). Both exist so other backends can be compared on the same starting point.
    ``instructions`` (one per image) replaces ``settings.instruction``: each image is edited exactly as
    it would be alone, so a batch of different edits costs one model call per step.
    """
    settings.validate()
    check_images(images)
    height, width = images.shape[-2:]
    sizing.check_input_size(width, height, settings.max_input_side)
    texts = [settings.instruction] * images.shape[0] if instructions is None else list(instructions)
    if len(texts) != images.shape[0] or not all(isinstance(t, str) for t in texts):
        raise IP2PError(f"instructions must be {images.shape[0]} texts, one per image.")
    if all(not t.strip() for t in texts):
        return images.clone()
    require_edit_model(model.family, model.source or "The model")
    settings = settings.for_image(model, width, height)

    working = sizing.prepare(images, settings.resize, settings.max_side)
    factor = model.vae_scale_factor
    if working.shape[-1] % factor or working.shape[-2] % factor:
        raise IP2PError(
            f"The working size {working.shape[-1]}×{working.shape[-2]} is not a multiple of the VAE's factor {factor}; "
            f"use --resize paper."
        )
    unet = model.unet
    device, dtype = unet.device, unet.dtype
    batch = working.shape[0]
    # One CPU generator per image, each seeded with the seed (diffusers' ``generator=[g1, g2, …]``):
    # an image's starting and per-step noise never depend on the batch it is edited in.
    generators = [torch.Generator(device="cpu").manual_seed(settings.seed) for _ in range(batch)]

    if sigmas is None:
        scheduler = schedulers.make_scheduler(model.scheduler_config, settings.sampler, settings.scheduler)
        # Refuses a schedule this model cannot run (steps past its timesteps); starts at index 0.
        schedulers.set_steps(scheduler, settings.steps, settings.sampler, settings.scheduler, device=device)
        timesteps = scheduler.timesteps
    else:
        scheduler = schedulers.explicit_sigma_scheduler(model.scheduler_config, settings.sampler, settings.scheduler)
        timesteps = schedulers.set_sigmas(scheduler, sigmas, device=device)

    text = encode_text(model, texts).to(device=device, dtype=dtype)
    no_text = encode_text(model, [settings.negative]).to(device=device, dtype=dtype).expand(batch, -1, -1)
    image_latent = encode_image_latent(model, working).to(device=device, dtype=dtype)

    shape = (batch, model.vae.config.latent_channels, working.shape[-2] // factor, working.shape[-1] // factor)
    latents = _start_latents(model, shape, noise, generators, dtype, device)
    latents = latents * start_sigma_scale(scheduler, sigmas)

    guide = settings.guidance()
    branches = guide.branches
    text_batch, image_batch = branch_inputs(branches, text, no_text, image_latent)
    step_kwargs = _step_kwargs(scheduler, generators)

    bar = _progress(len(timesteps), progress)
    try:
        for t in timesteps:
            scaled = scheduler.scale_model_input(latents, t)
            model_input = torch.cat([scaled.repeat(len(branches), 1, 1, 1), image_batch], dim=1)
            prediction = unet(model_input, t, encoder_hidden_states=text_batch, return_dict=False)[0]
            guided = guide.combine_batch(prediction)
            latents = scheduler.step(guided, t, latents, **step_kwargs, return_dict=False)[0]
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()

    edited = decode_latents(model, latents)
    check_finite_result(edited, dtype)  # once, on the decoded result: a per-step check would sync the device every step
    return sizing.restore(edited, (width, height), settings.resize)


def start_sigma_scale(scheduler, sigmas: torch.Tensor | None):
    """How much the unscaled N(0, 1) starting latent is multiplied by."""
    if sigmas is None:
        return scheduler.init_noise_sigma  # the pipeline's convention
    first = float(torch.as_tensor(sigmas).flatten()[0])
    sigma_max = float(schedulers.model_sigmas(scheduler)[-1])
    # ComfyUI's: at full denoise the noise is scaled to the variance of x_T, √(1 + σ²).
    return (1 + first**2) ** 0.5 if first >= sigma_max * (1 - 1e-5) else first


def _step_kwargs(scheduler, generators: list[torch.Generator]) -> dict:
    """The pipeline's extra step arguments: the generators (ancestral noise) and DDIM's eta = 0.

    Every diffusers scheduler we map draws its step noise with ``randn_tensor``, which takes the list
    as the pipeline passes it: each image's noise from its own generator, as for the start.
    """
    import inspect

    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict = {}
    if "generator" in accepted:
        kwargs["generator"] = generators
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    return kwargs

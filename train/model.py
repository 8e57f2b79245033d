"""The model to train: the base loaded offline, conv_in widened to 8 channels, VAE and text encoder frozen; the EMA."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from pathlib import Path

import torch

from ip2p.errors import IP2PError
from ip2p.headless.components import EditModel
from ip2p.headless.widen import widen_model
from ip2p.training import ema_decay

from . import lora

logger = logging.getLogger(__name__)

CONFIG_PREFIX = "config:"


def load_base(base: str | None, seed: int = 0, widen: bool = True) -> EditModel:
    """``model.base`` -> an 8-channel (InstructPix2Pix) model in float32 on the CPU.

    ``config:NAME`` builds the named architecture of :mod:`ip2p.headless.random_model` with random
    weights (``config:toy``: a random UNet with the shipped toy model's VAE and text encoder); a path is a diffusers folder
    or a single file of an SD 1.5 model, 4-channel (widened here: pretrained channels copied, new
    ones zero) or 8-channel (training continues from it). ``widen=False`` (a LoRA run) refuses a 4-channel base.
    """
    if not base:
        raise IP2PError(
            "model.base is not set: give the model to start from, e.g. model.base=/models/v1-5-pruned-emaonly"
            ".safetensors (an SD 1.5 checkpoint or diffusers folder) or model.base=config:tiny (random weights)."
        )
    if base.startswith(CONFIG_PREFIX):
        from ip2p.headless.random_model import SIZES, build_random_model

        name = base[len(CONFIG_PREFIX) :]
        if name not in SIZES:
            raise IP2PError(
                f"model.base={base}: no architecture named {name!r}; use one of "
                f"{', '.join(CONFIG_PREFIX + s for s in SIZES)}, or a model path."
            )
        if name != "toy":
            return build_random_model(name, in_channels=8, seed=seed)
        from ip2p.headless.toy_model import random_toy_model, shipped_frozen_parts

        parts, frozen_hash = shipped_frozen_parts()
        return with_frozen_parts(random_toy_model(seed), frozen_hash, **parts)
    from ip2p.headless.loading import load_edit_model

    path = Path(base).expanduser()
    if not path.exists():
        raise IP2PError(f"model.base={base} does not exist. Give an SD 1.5 checkpoint file or diffusers folder.")
    try:
        model = load_edit_model(path, require_edit=False)
    except IP2PError as exc:
        raise IP2PError(f"model.base={base} cannot be trained from: {exc}") from exc
    if model.family.base != "sd15" or model.family.prediction != "epsilon":  # pragma: no cover - loader refuses first
        raise IP2PError(f"model.base={base} is a {model.family.name} model; the trainer trains SD 1.5 models.")
    if not model.family.is_edit_model:
        if not widen:
            lora.refuse_widening(base, model.unet.config.in_channels)
        logger.info("Widening %s's conv_in from 4 to 8 input channels (the 4 new ones start at zero)", base)
        widen_model(model)
    return model


@torch.no_grad()
def encode_pairs(model: EditModel, edited: torch.Tensor, source: torch.Tensor):
    """Pixels in [-1, 1] -> the edited images' VAE posterior (mean, std) and the input images' latent.

    The input latent is the posterior's mode, scaled as the model family says (SD 1.5 InstructPix2Pix:
    unscaled). The one encoding of the frozen VAE, for the training step and the latent cache alike.
    """
    posterior = model.vae.encode(edited).latent_dist
    mode = model.vae.encode(source).latent_dist.mode()
    return posterior.mean, posterior.std, model.family.image_latent(mode, model.latent_scaling_factor)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    return module.eval()


def with_frozen_parts(model: EditModel, frozen_hash: str, **parts) -> EditModel:
    """``model`` with ``parts`` (e.g. ``vae=``; their weights hash to ``frozen_hash``) in place of its own, and a
    model hash that names both: the latent cache is keyed by it, so changed frozen parts never reuse what the
    old ones encoded."""
    identity = f"{model.model_hash}+{frozen_hash}"
    return dataclasses.replace(model, **parts, model_hash=hashlib.sha256(identity.encode()).hexdigest()[:12])


def frozen_encoders_on(model: EditModel, device, dtype: torch.dtype) -> EditModel:
    """``model`` with its VAE and text encoder on ``device`` in ``dtype``, for encoding the training data.

    Modules already there are shared; others are copied, so ``model`` keeps its float32 CPU weights:
    validation and export read those (an export of a bf16-cast VAE would lose precision), and the
    accelerator holds only the mixed-precision copies, which the latent cache drops once it is filled.
    """
    encoder = copy.copy(model)
    for name in ("vae", "text_encoder"):
        module = getattr(model, name)
        weight = next(module.parameters())
        if weight.device != torch.device(device) or weight.dtype != dtype:
            module = freeze(copy.deepcopy(module).to(device=device, dtype=dtype))
        setattr(encoder, name, module)
    return encoder


def make_optimizer(params: list[torch.nn.Parameter], optim) -> torch.optim.Optimizer:
    """AdamW with ``optim``'s settings (an :class:`~.config.OptimConfig`): bitsandbytes' 8-bit AdamW when
    ``optim.adam_8bit`` (its two states in 8 bits: 6 bytes less per trained parameter), else torch's fused
    AdamW (one kernel per step, no parameter-sized temporaries)."""
    settings = dict(lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay, eps=optim.eps)
    if not optim.adam_8bit:
        return torch.optim.AdamW(params, fused=True, **settings)
    try:
        import bitsandbytes
    except ImportError as exc:
        raise IP2PError(
            "optim.adam_8bit=true needs bitsandbytes, which is not installed: pip install bitsandbytes "
            "(or set optim.adam_8bit=false)."
        ) from exc
    return bitsandbytes.optim.AdamW8bit(params, **settings)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` whole: FSDP shards parameters into DTensors, and gathering one is a collective (every process
    must call this for the same tensors in the same order); a plain tensor is returned as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(whole_tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``whole_tensor`` laid out as ``like``: this process's shard when ``like`` is an FSDP DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    whole_tensor = whole_tensor.to(device=like.device, dtype=like.dtype)
    if isinstance(like, DTensor):
        return distribute_tensor(whole_tensor, like.device_mesh, like.placements)
    return whole_tensor


class EMA:
    """An exponential moving average of a module's trainable parameters (float32, on the module's device).

    Under FSDP the shadows are shards, like the parameters they follow. Checkpointed through accelerate
    (``register_for_checkpointing``: ``state_dict`` gathers whole tensors, ``load_state_dict`` shards them).
    """

    def __init__(self, module: torch.nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow = [p.detach().clone().float() for p in module.parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        decay = ema_decay(self.decay, self.updates, self.warmup)
        params = [p for p in module.parameters() if p.requires_grad]
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in params], 1.0 - decay)

    def state_dict(self) -> dict:
        shadow = [whole(s) for s in self.shadow]
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates, "shadow": shadow}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise IP2PError("The checkpoint's EMA does not fit this model (a different number of parameters).")
        self.updates = int(state["updates"])
        self.shadow = [shard_like(s, t) for s, t in zip(state["shadow"], self.shadow, strict=True)]


def _cpu_copy(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself when it is already float32 on the CPU, else a float32 CPU copy."""
    p = next(module.parameters())
    if p.device.type == "cpu" and p.dtype == torch.float32:
        return module
    return copy.deepcopy(module).to(device="cpu", dtype=torch.float32).eval()


def trained_state(unet: torch.nn.Module, ema: EMA | None) -> dict[str, torch.Tensor]:
    """The UNet's state as whole float32 CPU tensors, with the EMA's shadows for the trainable parameters.

    Under FSDP this gathers the shards: every process calls it (only the main one uses the result).
    """
    state = {k: whole(v.detach()) for k, v in unet.state_dict().items()}
    if ema is not None:
        trainable = [name for name, p in unet.named_parameters() if p.requires_grad]  # the EMA's order
        state.update(zip(trainable, (whole(s) for s in ema.shadow), strict=True))
    return {k: v.to(device="cpu", dtype=torch.float32) for k, v in state.items()}  # copies only off-CPU/non-fp32


def model_for_export(model: EditModel, unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> EditModel:
    """A float32 CPU view of the model to save, its UNet holding ``state`` (:func:`trained_state`: the EMA's
    weights when there is an EMA).

    Nothing already float32 on the CPU is copied: the exported UNet's parameters are the live weights
    (or the EMA's shadows, separate tensors) assigned to a second module, which is only read, so the
    training modules are never moved or modified and a save adds no UNet-sized copy (SD 1.5: 3.4 GB).
    A LoRA run's UNet is exported with its adapters merged (only the wrapped weights are new tensors).
    """
    if lora.lora_paths(unet):
        state = lora.merged_state(*lora.split_state(unet, state))
    exported_unet = _empty_like(unet)
    exported_unet.load_state_dict(state, strict=True, assign=True)
    exported = copy.copy(model)
    exported.unet = exported_unet.eval()
    exported.vae = _cpu_copy(model.vae)
    exported.text_encoder = _cpu_copy(model.text_encoder)
    return exported


def _empty_like(module: torch.nn.Module) -> torch.nn.Module:
    """A module of the same class and config built on the meta device (weights to be assigned)."""
    with torch.device("meta"):
        if hasattr(module, "from_config"):  # diffusers
            return type(module).from_config(module.config)
        return type(module)(module.config)  # pragma: no cover - only UNets are rebuilt here

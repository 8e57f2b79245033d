"""LoRA fine-tuning: wrapper modules on the UNet's attention projections (and conv_in), and the adapter file.

Our own small implementation rather than PEFT (not installed, and its key names would need
converting anyway): each wrapped layer keeps its frozen ``weight``/``bias`` under their own names
and adds ``lora_down`` / ``lora_up`` (up zero-initialised, so training starts exactly at the base),
scaled by ``alpha / rank``. The adapter file uses ComfyUI's keys (:mod:`ip2p.lora`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ip2p import lora as keys
from ip2p.errors import IP2PError
from ip2p.formats.checkpoint import save_safetensors_atomic

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
CONV_IN_ORIGINAL = "input_blocks.0.0"  # conv_in's original-layout path (the .diff keys)


class LoRALinear(nn.Linear):
    """A frozen ``nn.Linear`` plus ``scale · up(down(x))``; still an ``nn.Linear`` (same weight and bias names)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        nn.Linear.__init__(self, base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_down = nn.Linear(base.in_features, rank, bias=False, **like)
        self.lora_up = nn.Linear(rank, base.out_features, bias=False, **like)
        nn.init.zeros_(self.lora_up.weight)
        self.scale = keys.lora_scale(alpha, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.scale * self.lora_up(self.lora_down(x))


class LoRAConv2d(nn.Conv2d):
    """A frozen ``nn.Conv2d`` plus ``scale · up(down(x))``: down has the base's kernel, up is 1×1."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float) -> None:
        nn.Conv2d.__init__(
            self, base.in_channels, base.out_channels, base.kernel_size, stride=base.stride, padding=base.padding,
            dilation=base.dilation, groups=base.groups, bias=base.bias is not None, padding_mode=base.padding_mode,
            device="meta",
        )  # fmt: skip
        self.weight, self.bias = base.weight, base.bias
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_down = nn.Conv2d(
            base.in_channels, rank, base.kernel_size, stride=base.stride, padding=base.padding,
            dilation=base.dilation, bias=False, **like,
        )  # fmt: skip
        self.lora_up = nn.Conv2d(rank, base.out_channels, 1, bias=False, **like)
        nn.init.zeros_(self.lora_up.weight)
        self.scale = keys.lora_scale(alpha, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.scale * self.lora_up(self.lora_down(x))


LORA_LAYERS = (LoRALinear, LoRAConv2d)


def refuse_widening(base: str | None, in_channels: int) -> None:
    """A LoRA run needs an InstructPix2Pix (8-channel) base: widening 4 -> 8 channels needs full fine-tuning."""
    raise IP2PError(
        f"lora.rank is set but model.base={base} is a {in_channels}-channel model. A LoRA trains "
        f"on an InstructPix2Pix (8-channel) base; widening conv_in to 8 channels needs full fine-tuning. Train "
        f"with lora.rank=0 first, or start from an InstructPix2Pix model."
    )


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def attention_paths(unet: nn.Module) -> list[str]:
    """Diffusers paths of every attn1/attn2 projection (to_q, to_k, to_v, to_out.0) of the UNet."""
    found = []
    for name, _ in unet.named_modules():
        if name.rsplit(".", 1)[-1] in ("attn1", "attn2"):
            found += [f"{name}.{projection}" for projection in ATTENTION_PROJECTIONS]
    return found


def add_lora(unet: nn.Module, rank: int, alpha: float | None, conv_in: str) -> list[str]:
    """Freeze the UNet, wrap its attention projections (and conv_in) with LoRA; returns the wrapped paths.

    Afterwards only the LoRA parameters (and conv_in's weight and bias with ``conv_in="full"``)
    require gradients.
    """
    alpha = float(rank if alpha is None else alpha)
    unet.requires_grad_(False)
    paths = attention_paths(unet)
    for path in paths:
        _set_submodule(unet, path, LoRALinear(unet.get_submodule(path), rank, alpha))
    if conv_in == "lora":
        unet.conv_in = LoRAConv2d(unet.conv_in, rank, alpha)
        paths.append("conv_in")
    elif conv_in == "full":
        unet.conv_in.requires_grad_(True)
    for module in unet.modules():
        if isinstance(module, LORA_LAYERS):
            module.lora_down.requires_grad_(True)
            module.lora_up.requires_grad_(True)
    return paths


def lora_paths(unet: nn.Module) -> list[str]:
    return [name for name, module in unet.named_modules() if isinstance(module, LORA_LAYERS)]


def split_state(unet: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, tuple]]:
    """A wrapped UNet's state -> (the plain UNet's state, {path: (down, up, scale)})."""
    adapters = {}
    for path in lora_paths(unet):
        down, up = state.pop(f"{path}.lora_down.weight"), state.pop(f"{path}.lora_up.weight")
        adapters[path] = (down, up, unet.get_submodule(path).scale)
    return state, adapters


def checkpoint_trainable_only(accelerator) -> None:
    """Make accelerate's checkpoints of a LoRA run hold the trainable parameters only.

    The frozen base is re-read from ``model.base`` on resume (its hash is checked by the loop), so
    an SD 1.5 checkpoint is megabytes instead of the 3.4 GB UNet. Resume then loads non-strictly,
    after the load hook has checked that the file holds every trainable parameter and nothing the
    model lacks.
    """

    def drop_frozen(models: list, weights: list, output_dir: str) -> None:
        for model, state in zip(models, weights, strict=True):
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            for key in [k for k in state if k not in trainable]:
                del state[key]

    def check_saved(models: list, input_dir: str) -> None:
        from safetensors import safe_open

        for index, model in enumerate(models):
            path = Path(input_dir) / ("model.safetensors" if index == 0 else f"model_{index}.safetensors")
            if not path.is_file():
                continue  # accelerate reports the missing file itself
            with safe_open(str(path), framework="pt") as handle:
                saved = set(handle.keys())
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            missing, unknown = sorted(trainable - saved), sorted(saved - set(model.state_dict()))
            if missing or unknown:
                raise IP2PError(
                    f"{path} does not hold this LoRA run's parameters (missing {missing[:2]}, unknown "
                    f"{unknown[:2]}): it was written with other lora.* settings. Resume with the run's own config."
                )

    accelerator.register_save_state_pre_hook(drop_frozen)
    accelerator.register_load_state_pre_hook(check_saved)


def adapter_tensors(
    adapters: dict[str, tuple], conv_in_diff: tuple[torch.Tensor, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """The adapter file's tensors in ComfyUI's keys (float32, contiguous, on the CPU)."""
    out: dict[str, torch.Tensor] = {}
    for path, (down, up, scale) in adapters.items():
        name, rank = keys.lora_name(path), down.shape[0]
        out[name + keys.DOWN] = down.detach().float().cpu().contiguous()
        out[name + keys.UP] = up.detach().float().cpu().contiguous()
        out[name + keys.ALPHA] = torch.tensor(scale * rank, dtype=torch.float32)
    if conv_in_diff is not None:
        weight, bias = conv_in_diff
        out[keys.DIFF_PREFIX + CONV_IN_ORIGINAL + keys.DIFF] = weight.detach().float().cpu().contiguous()
        out[keys.DIFF_PREFIX + CONV_IN_ORIGINAL + keys.DIFF_B] = bias.detach().float().cpu().contiguous()
    return out


def merged_state(state: dict[str, torch.Tensor], adapters: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """The plain UNet state with each LoRA merged into its weight (what the adapter gives at strength 1)."""
    merged = dict(state)
    for path, (down, up, scale) in adapters.items():
        key = f"{path}.weight"
        delta = keys.lora_delta(down, up, scale * down.shape[0])
        merged[key] = (merged[key].float() + delta.to(merged[key].device)).to(merged[key].dtype)
    return merged


def save_adapter(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write the adapter atomically; the header records rank, alpha, conv_in mode and the base's hash."""
    header = {"format": "pt", "ip2p_format": keys.METADATA_FORMAT}
    header.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    return save_safetensors_atomic(tensors, Path(path), metadata=header)

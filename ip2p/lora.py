"""LoRA adapters in ComfyUI's SD 1.5 key format: names, reading, checking and merging into UNet weights.

The trainer writes adapters with these names and the headless backend merges them; ComfyUI reads
the same file with its own loader (``comfy/lora.py``). Keys, for a module at diffusers path ``P``:

- ``lora_unet_<P with dots as _>.lora_down.weight`` (rank, in[, kh, kw]), ``.lora_up.weight``
  (out, rank[, 1, 1]) and ``.alpha`` (a scalar): the weight gains ``alpha / rank · up @ down``;
- ``diffusion_model.<original path>.diff`` / ``.diff_b``: a whole weight / bias difference (a
  fully trained ``conv_in`` is ``diffusion_model.input_blocks.0.0.diff``).

Pure torch and safetensors: the nodes may use it too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import IP2PError

LORA_PREFIX = "lora_unet_"
DIFF_PREFIX = "diffusion_model."
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
DIFF, DIFF_B = ".diff", ".diff_b"
METADATA_FORMAT = "ip2p.lora"  # the header's ``format`` value
EXPECTED_FORMAT = (
    "ComfyUI's SD 1.5 LoRA keys (lora_unet_<module>.lora_down.weight / .lora_up.weight / .alpha, as kohya "
    "and this trainer write them)"
)
MAX_STRENGTH = 100.0  # ComfyUI's LoraLoader offers -100 to 100
_PEFT_MARKERS = ("lora_A.", "lora_B.", "base_model.model.", "lora_magnitude_vector")


def lora_name(module_path: str) -> str:
    """``"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"`` -> ``"lora_unet_down_blocks_0_..._to_q"``."""
    return LORA_PREFIX + module_path.replace(".", "_")


def lora_scale(alpha: float, rank: int) -> float:
    return alpha / rank


def lora_delta(down: torch.Tensor, up: torch.Tensor, alpha: float | None) -> torch.Tensor:
    """The weight difference ``alpha / rank · up @ down`` (float32), shaped as the weight: (out, in[, kh, kw])."""
    rank = down.shape[0]
    scale = lora_scale(float(alpha) if alpha is not None else rank, rank)
    delta = up.float().flatten(1) @ down.float().flatten(1)
    return scale * delta.reshape(up.shape[0], *down.shape[1:])


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An adapter file's tensors and header metadata; PEFT/diffusers-format files are refused."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise IP2PError(f"LoRA {path} does not exist. Give a .safetensors adapter file.")
    if path.suffix.lower() != ".safetensors":
        raise IP2PError(f"LoRA {path} is not a .safetensors file. Adapters are read from .safetensors only.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise IP2PError(f"LoRA {path} cannot be read as safetensors ({exc}). The file may be damaged.") from exc
    peft = [k for k in state if any(marker in k for marker in _PEFT_MARKERS) or k.startswith("unet.")]
    if peft:
        raise IP2PError(
            f"LoRA {path} is in PEFT/diffusers format (e.g. {peft[0]!r}); expected {EXPECTED_FORMAT}. Convert it "
            f"(e.g. diffusers' convert_unet_state_dict_to_peft in reverse, or kohya's conversion scripts)."
        )
    if not state:
        raise IP2PError(f"LoRA {path} holds no tensors; expected {EXPECTED_FORMAT}.")
    return state, dict(metadata)


def adapter_deltas(
    adapter: Mapping[str, torch.Tensor],
    unet_state: Mapping[str, torch.Tensor],
    original_names: Mapping[str, str],
    source: str = "the adapter",
) -> dict[str, torch.Tensor]:
    """{diffusers UNet key: float32 difference at strength 1} for every entry of ``adapter``.

    ``original_names`` maps original UNet keys (``input_blocks.0.0.weight``) to diffusers keys, for
    ``.diff`` entries. Keys that match no UNet weight and shapes that do not fit are refused.
    """
    check_finite(adapter, source)
    modules = {key.removesuffix(".weight"): key for key in unet_state if key.endswith(".weight")}
    by_lora_name = {lora_name(path): key for path, key in modules.items()}
    deltas: dict[str, torch.Tensor] = {}
    unmatched: list[str] = []
    used: set[str] = set()
    for key in adapter:
        if key.endswith(DOWN):
            name = key.removesuffix(DOWN)
            target = by_lora_name.get(name)
            if target is None or name + UP not in adapter:
                unmatched.append(key)
                continue
            alpha = adapter.get(name + ALPHA)
            down, up = adapter[key], adapter[name + UP]
            if up.ndim != down.ndim or up.shape[1] != down.shape[0]:
                raise IP2PError(
                    f"{source}: {name} has lora_down {tuple(down.shape)} and lora_up {tuple(up.shape)}, which do "
                    f"not chain (up's second dimension must be the rank, down's first). The file is damaged."
                )
            _put(deltas, target, lora_delta(down, up, None if alpha is None else float(alpha)), unet_state, source)
            used |= {key, name + UP, name + ALPHA}
        elif key.endswith((DIFF, DIFF_B)) and key.startswith(DIFF_PREFIX):
            stem = key.removeprefix(DIFF_PREFIX).removesuffix(DIFF_B if key.endswith(DIFF_B) else DIFF)
            original = stem + (".bias" if key.endswith(DIFF_B) else ".weight")
            target = original_names.get(original)
            if target is None:
                unmatched.append(key)
                continue
            _put(deltas, target, adapter[key].float(), unet_state, source)
            used.add(key)
    unmatched += [k for k in adapter if k not in used and k not in unmatched and not k.endswith(ALPHA)]
    unmatched += [k for k in adapter if k.endswith(ALPHA) and k.removesuffix(ALPHA) + DOWN not in adapter]
    if unmatched:
        text_encoder = any(k.startswith("lora_te") for k in unmatched)
        raise IP2PError(
            f"{source}: {len(unmatched)} key(s) match no weight of this UNet, e.g. {', '.join(sorted(unmatched)[:3])}. "
            + (
                "Text-encoder LoRA keys (lora_te_*) are not applied headless; use the adapter in ComfyUI's LoraLoader."
                if text_encoder
                else f"Expected {EXPECTED_FORMAT} for an SD 1.5 UNet; the adapter may be for another architecture."
            )
        )
    return deltas


def check_finite(adapter: Mapping[str, torch.Tensor], source: str = "the adapter") -> None:
    """Refuse an adapter holding NaN or infinite values (an ``alpha`` among them): merged, they poison every weight."""
    for key, tensor in adapter.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise IP2PError(
                f"{source}: {key} holds NaN or infinite values. The adapter is damaged (or its training diverged); "
                f"use an earlier checkpoint's adapter."
            )


def check_strength(strength: float, source: str = "the adapter") -> float:
    """A finite strength within ComfyUI's LoraLoader range (±MAX_STRENGTH): beyond it a weight is only noise."""
    if not math.isfinite(strength) or abs(strength) > MAX_STRENGTH:
        raise IP2PError(
            f"{source}: strength {strength} is outside -{MAX_STRENGTH:g} to {MAX_STRENGTH:g}; give a finite "
            f"strength in that range (1.0: as trained, 0: off)."
        )
    return float(strength)


def _put(deltas: dict, target: str, delta: torch.Tensor, unet_state: Mapping[str, torch.Tensor], source: str) -> None:
    shape = tuple(unet_state[target].shape)
    if tuple(delta.shape) != shape:
        raise IP2PError(
            f"{source}: the difference for {target} has shape {tuple(delta.shape)} but the model's weight is {shape}. "
            f"The adapter was trained on another architecture (or a 4-channel base); use it with its own base."
        )
    deltas[target] = deltas[target] + delta if target in deltas else delta


@torch.no_grad()
def merge_deltas(
    module: torch.nn.Module, deltas: Mapping[str, torch.Tensor], strength: float, source: str = "the adapter"
) -> None:
    """Add ``strength ×`` each difference to ``module``'s weights in place (in float32, stored in their dtype).

    Every merged weight is computed and checked first: one that would overflow its dtype (a huge
    strength, a float16 model) is refused naming it, and ``module`` is left as it was.
    """
    params = dict(module.named_parameters())
    merged = {}
    for key, delta in deltas.items():
        param = params[key]
        value = (param.float() + strength * delta.to(param.device)).to(param.dtype)
        if not torch.isfinite(value).all():
            raise IP2PError(
                f"{source} at strength {strength:g} makes {key} infinite in {str(param.dtype).removeprefix('torch.')}. "
                f"Lower the strength."
            )
        merged[key] = value
    for key, value in merged.items():
        params[key].copy_(value)

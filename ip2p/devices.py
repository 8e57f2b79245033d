"""Which device and dtype a job runs on, and which process of a launch it is: one answer for every command.

``auto`` picks CUDA when present (float16 there), else the CPU in float32. A device that cannot
hold real tensors (``meta``) or that this torch build cannot reach is refused with the fix, before
any model is loaded.
"""

from __future__ import annotations

import os

import torch

from .errors import IP2PError

DTYPES = ("auto", "float32", "float16", "bfloat16")
RUNNABLE_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range for non-negative seeds


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "mps":
        return torch.backends.mps.is_available()
    module = getattr(torch, kind, None)
    return bool(module is not None and module.is_available())


def resolve_device(name: str) -> torch.device:
    """A torch device from ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise IP2PError(f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from exc
    if device.type not in RUNNABLE_DEVICE_TYPES:
        raise IP2PError(
            f"--device {name}: a {device.type!r} device cannot run a model here; use auto, cpu, cuda, cuda:N or mps."
        )
    if not _available(device.type):
        raise IP2PError(
            f"--device {name}: {device.type.upper()} is not available to this torch build. Use --device cpu."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise IP2PError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s). Pick another index.")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: float16 on a GPU, float32 on the CPU (float16 matmuls there are slow or missing)."""
    if name not in DTYPES:
        raise IP2PError(f"Unknown dtype {name!r}; choose one of {', '.join(DTYPES)}.")
    if name == "auto":
        return torch.float16 if device.type in ("cuda", "mps", "xpu") else torch.float32
    return getattr(torch, name)


def launched_process() -> tuple[int, int, int]:
    """(rank, world size, local rank) as ``accelerate launch`` / ``torchrun`` set them; (0, 1, 0) alone."""
    try:
        return tuple(
            int(os.environ.get(name, default)) for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))
        )  # type: ignore[return-value]
    except ValueError as exc:
        raise IP2PError(f"RANK / WORLD_SIZE / LOCAL_RANK must be whole numbers: {exc}") from None


def process_device(name: str, world: int, local_rank: int) -> torch.device:
    """``--device`` for one process of a launch: ``auto`` with several processes on CUDA is this process's own GPU."""
    if name == "auto" and world > 1 and resolve_device("auto").type == "cuda":
        name = f"cuda:{local_rank}"
    return resolve_device(name)

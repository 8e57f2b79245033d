"""What a training process holds in memory, and when: peak figures, freed memory returned to the system,
the frozen encoders parked on disk while the latent cache stands in for them."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile

import torch

from ip2p.headless.components import EditModel

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 64 * 1024  # bytes: blocks from here up get their own mapping, unmapped when freed
LARGE_MODEL_PARAMETERS = 100_000_000  # SD 1.5's UNet has 860 M, the toy's 3.2 M
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def return_freed_memory(parameters: int) -> bool:
    """For a model of ``parameters`` trained on a CPU: have glibc's malloc give large freed blocks back to
    the system at once (Linux). True when the setting was made.

    By default glibc raises its mmap threshold, up to 32 MB, each time a mapped block is freed; from
    then on activation-sized tensors come from the heap, where a freed block stays in the process
    until everything above it is freed too. The activations freed during backward then stay counted
    while the gradients are allocated beside them. A fixed 64 KB threshold gives each such tensor its
    own mapping, unmapped when freed: SD 1.5 at 256 px, float32 AdamW, 0.4 GB (3 %) less peak RSS for
    17 % fewer samples/s in one A/B round (bench/train.py; ``MALLOC_MMAP_THRESHOLD_=33554432`` prefers the speed).
    Only for models of ``LARGE_MODEL_PARAMETERS`` or more: a small model's steps allocate many small
    blocks, and mapping each costs more than it saves (the tiny model at 64 px: 25 % fewer samples/s
    for 5 % less peak RSS). A ``MALLOC_MMAP_THRESHOLD_`` in the environment is left to rule; elsewhere
    than glibc this does nothing.
    """
    if parameters < LARGE_MODEL_PARAMETERS:
        return False
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


def peak_memory(device) -> dict[str, float]:
    """This process's peak memory so far, for metrics.jsonl: allocated GPU memory on CUDA, else peak RSS (GB)."""
    if torch.device(device).type == "cuda":
        return {"peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 3)}
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"peak_rss_gb": round(peak * (1 if sys.platform == "darwin" else 1024) / 1e9, 3)}


class ParkedEncoders:
    """A model's frozen VAE and text encoder, out of memory while training reads the latent cache.

    Their float32 weights (and buffers) wait in an unlinked temporary file, which the system deletes
    with the process, even after kill -9; the modules stay in the model on the meta device and are
    loaded back only inside :meth:`loaded`, around validation and export.
    """

    NAMES = ("vae", "text_encoder")

    def __init__(self, model: EditModel) -> None:
        self.model = model
        self.file = tempfile.TemporaryFile(prefix="ip2p-encoders-")
        state = {name: _tensors(getattr(model, name)) for name in self.NAMES}
        torch.save(state, self.file)
        self.file.flush()
        self._release()

    def _release(self) -> None:
        for name in self.NAMES:
            getattr(self.model, name).to("meta")

    @contextlib.contextmanager
    def loaded(self):
        self.file.seek(0)
        state = torch.load(self.file, weights_only=True)  # our own file, read as plain tensors all the same
        for name, tensors in state.items():
            module = getattr(self.model, name).to_empty(device="cpu")
            with torch.no_grad():
                for key, tensor in tensors.items():
                    kind, _, path = key.partition(":")
                    (module.get_parameter if kind == "p" else module.get_buffer)(path).copy_(tensor)
        try:
            yield self.model
        finally:
            self._release()


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, the non-persistent ones too (which ``state_dict`` leaves out)."""
    out = {f"p:{name}": p.detach() for name, p in module.named_parameters()}
    out.update({f"b:{name}": b.detach() for name, b in module.named_buffers()})
    return out

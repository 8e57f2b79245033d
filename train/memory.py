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
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def return_freed_memory() -> None:
    """Have glibc's malloc give large freed blocks back to the system at once (Linux; a CPU run's memory).

    By default glibc raises its mmap threshold, up to 32 MB, each time a mapped block is freed; from
    then on activation-sized tensors come from the heap, where a freed block stays in the process
    until everything above it is freed too. On a CPU, the activations freed during backward then stay
    counted while the gradients are allocated beside them. A fixed 64 KB threshold gives each such
    tensor its own mapping, unmapped when freed (SD 1.5, 256 px, float32 AdamW on a CPU: 0.4 GB less
    peak RSS at the same speed, bench/train.py). A ``MALLOC_MMAP_THRESHOLD_`` in the environment is left
    to rule; elsewhere than glibc this does nothing.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        logger.debug("mallopt(M_MMAP_THRESHOLD) was refused; the allocator keeps its defaults")


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

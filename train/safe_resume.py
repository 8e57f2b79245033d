"""Resuming reads tensors and plain data only: a checkpoint folder is someone's files, not code to run.

accelerate's ``load_state`` unpickles its custom objects (the LR schedule, the EMA) with
``weights_only=False``, DeepSpeed and torch.distributed.checkpoint do the same for their own
files, and a pickle can run any code as it loads. So before anything is loaded,
:func:`check_checkpoint` reads every file of the checkpoint the way it is safe to read it, and
refuses the first one that holds anything else, naming it; then :func:`weights_only_loads`
forces every ``torch.load`` inside ``load_state`` to ``weights_only=True`` as well, so a file
swapped between the check and the load cannot run code either.

- ``*.safetensors``: the header is parsed (safetensors holds no code);
- ``*.json`` / ``*.yaml`` / the ``complete`` marker and DeepSpeed's ``latest``: parsed as JSON, safe YAML, text;
- torch.distributed.checkpoint's ``.metadata`` (a plain pickle): unpickled by
  :class:`MetadataUnpickler`, which builds the checkpoint-metadata classes and nothing else;
- ``*.distcp`` (torch.distributed.checkpoint's data): their items are read at load time, under
  :func:`weights_only_loads`;
- ``*.py`` (the scripts DeepSpeed copies beside its checkpoint for people to run): never read on resume;
- every other file: ``torch.load(weights_only=True)``, memory-mapped (tensors are not read), with
  the few plain globals the RNG states (numpy arrays) and DeepSpeed's optimizer states (its loss
  scaler and two plain records) need allowed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

from ip2p.errors import IP2PError

TEXT_FILES = ("complete", "latest")  # our marker; DeepSpeed's name of its checkpoint folder
UNREAD_SUFFIXES = (
    ".py",
)  # DeepSpeed's zero_to_fp32.py and zero_to_torch.py, copied for people: resume never reads them
DCP_METADATA = ".metadata"
DCP_DATA_SUFFIX = ".distcp"

# Modules whose classes torch.distributed.checkpoint's metadata is built from (dataclasses of names,
# shapes, dtypes and offsets), plus the plain values they hold.
_METADATA_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_METADATA_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout by its name, from torch's own table
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("pathlib", "PosixPath"),  # the checkpoint's own path, as a record (a path object runs nothing)
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
}


def _numpy_rng_globals() -> list:
    """What ``numpy.random.get_state()`` pickles into (accelerate's RNG file): arrays and dtypes, no code."""
    import codecs

    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    found = [core.multiarray._reconstruct, np.ndarray, np.dtype, codecs.encode]
    if hasattr(np, "dtypes"):
        found.append(np.dtypes.UInt32DType)
    return found


def _deepspeed_globals() -> list:
    """The plain enums and records DeepSpeed's checkpoints pickle (only when DeepSpeed is installed)."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except Exception:  # DeepSpeed is optional: without it, no DeepSpeed checkpoint can be resumed anyway
        return []
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]  # numbers and names, no code


def allowed_globals() -> list:
    return [*_numpy_rng_globals(), *_deepspeed_globals()]


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles torch.distributed.checkpoint's ``.metadata``: its own classes and plain containers only."""

    def find_class(self, module: str, name: str):
        if module in _METADATA_MODULES or (module, name) in _METADATA_GLOBALS or _is_torch_dtype(module, name):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def _is_torch_dtype(module: str, name: str) -> bool:
    return module == "torch" and isinstance(
        getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)
    )


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` in the block reads tensors and plain data only, whatever its caller asks."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def check_checkpoint(folder: Path) -> None:
    """Read every file under ``folder`` safely (see the module's text); the first that is not tensors and plain
    data is refused, named, with nothing in it run."""
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            _check_file(path)
        except IP2PError:
            raise
        except Exception as exc:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise IP2PError(
                f"{path} is not a checkpoint file of tensors and plain data ({type(exc).__name__}: {reason}). "
                f"Nothing in it was run. The checkpoint is damaged or was tampered with: resume from a checkpoint "
                f"you trust, or start a new run in a new output_dir."
            ) from None


def _check_file(path: Path) -> None:
    name = path.name
    if name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            list(handle.keys())
    elif name.endswith(".json"):
        json.loads(path.read_text(encoding="utf-8"))
    elif name.endswith((".yaml", ".yml")):
        yaml.safe_load(path.read_text(encoding="utf-8"))
    elif name in TEXT_FILES:
        path.read_text(encoding="utf-8")
    elif name == DCP_METADATA:
        MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
    elif name.endswith(DCP_DATA_SUFFIX):
        return  # read item by item at load time, under weights_only_loads()
    elif name.endswith(UNREAD_SUFFIXES):
        return
    else:
        with torch.serialization.safe_globals(allowed_globals()):
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)

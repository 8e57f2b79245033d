"""Checkpoint files: which format a path is, reading weights safely, facts about the UNet.

torch and safetensors only (no diffusers), so the ComfyUI nodes can use it too.

``.ckpt``/``.pt``/``.pth`` files are pickles, and a pickle can run code. They are read with
``torch.load(weights_only=True)``; the harmless non-tensor objects that real PyTorch Lightning
checkpoints carry (the paper's release among them) are mapped to inert placeholders by exact
name, and anything else is refused. There is no fallback to a full unpickle.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import pickletools
import re
import zipfile
from pathlib import Path

import torch

from ..errors import IP2PError
from ..model_family import ModelFamily, classify
from .atomic import atomic_file, require_writable

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
SINGLE_FILE_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
WEIGHT_SUFFIXES = SINGLE_FILE_SUFFIXES + (".bin",)
DIFFUSERS_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

UNET_PREFIX = "model.diffusion_model."
UNET_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
SDXL_MARKER_KEY = UNET_PREFIX + "label_emb.0.0.weight"  # SDXL's size/crop conditioning embedding
CONTEXT_KEY = UNET_PREFIX + "input_blocks.{}.1.transformer_blocks.0.attn2.to_k.weight"
EDM_VPRED_KEY = "edm_vpred.sigma_max"  # CosXL / CosXL-Edit mark their EDM v-prediction this way
# Our single files carry one safetensors metadata key (one key keeps the file bytes reproducible):
# JSON {"configs": {"unet", "vae", "text_encoder", "scheduler"}, "tokenizer": "synthetic:<vocab>" or absent}.
META_KEY = "ip2p"
CONFIG_PARTS = ("unet", "vae", "text_encoder", "scheduler")


# --------------------------------------------------------------------------------------------
# Format detection


def require_exists(path: Path) -> None:
    if not path.exists():
        raise IP2PError(
            f"Model not found: {path} does not exist. Pass the path of a .safetensors/.ckpt file or of a "
            f"diffusers model folder (with model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."
        )


def missing_diffusers_components(folder: str | os.PathLike) -> list[str]:
    """The parts a diffusers model folder lacks, by name (``model_index.json`` and subfolders)."""
    folder = Path(folder)
    missing = [] if (folder / "model_index.json").is_file() else ["model_index.json"]
    missing += [name + "/" for name in DIFFUSERS_COMPONENTS if not (folder / name).is_dir()]
    return missing


def detect_format(path: str | os.PathLike) -> str:
    """``"single_file"`` (original layout, one file) or ``"diffusers"`` (a model folder)."""
    path = Path(path)
    require_exists(path)
    if path.is_dir():
        if (path / "model_index.json").is_file() or (path / "unet").is_dir():
            return "diffusers"
        raise IP2PError(
            f"{path} is a folder but not a diffusers model: it has no model_index.json and no unet/ "
            f"(a diffusers model folder has model_index.json, {', '.join(c + '/' for c in DIFFUSERS_COMPONENTS)}). "
            f"Pass the model folder itself, or a single .safetensors/.ckpt checkpoint file."
        )
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return "single_file"
    raise IP2PError(
        f"{path} has the suffix {path.suffix or '(none)'!r}, which is not a checkpoint format this loader reads. "
        f"Expected a single file ({', '.join(SINGLE_FILE_SUFFIXES)}) or a diffusers model folder."
    )


# --------------------------------------------------------------------------------------------
# Reading pickled checkpoints safely


class _Inert:
    """Stands in for a harmless class named in a checkpoint; constructing or filling it does nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass

    def __repr__(self) -> str:
        return f"<placeholder for {type(self).__name__}>"


def _inert_function(*args: object, **kwargs: object) -> None:
    """Stands in for a harmless reconstructor (numpy scalars): returns None instead of a value."""
    return None


# Classes whose instances (or the classes themselves, as dict keys) appear in Lightning
# checkpoints beside the weights. Only the names are matched; nothing of theirs is imported or run.
_HARMLESS_CLASSES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
    "numpy.dtype",
)
# Reconstructors of numpy scalars (e.g. best_model_score) and of numpy dtypes by class.
_HARMLESS_FUNCTIONS = (
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
)


def _harmless_globals() -> list[tuple[object, str]]:
    entries: list[tuple[object, str]] = []
    for name in _HARMLESS_CLASSES:
        placeholder = type(name, (_Inert,), {"__module__": __name__})
        entries.append((placeholder, name))
    for name in _HARMLESS_FUNCTIONS:
        entries.append((_inert_function, name))
    return entries


def _refuse_code(path: Path, detail: str) -> IP2PError:
    return IP2PError(
        f"{path} contains pickled objects that are not plain weights ({detail}); loading them would run code "
        f"from the file, and this loader never does. Use a .safetensors version of this model, or convert a "
        f"trusted copy with a tool you trust."
    )


# torch's refusals end with advice to turn the protection off; only these facts are passed on.
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL (\S+?)(?:\s|$)")
_OPERAND_IN_MESSAGE = re.compile(r"Unsupported operand \d+")
_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_ADVICE_WORDS = ("weights_only", "safe_globals", "add_safe_globals", "trust the source")


def _pickle_problem(exc: BaseException) -> str:
    """The offending object from torch's refusal, without its advice to turn the protection off."""
    named = _GLOBAL_IN_MESSAGE.search(str(exc))
    if named:
        return f"a reference to {named.group(1)}"
    operand = _OPERAND_IN_MESSAGE.search(str(exc))
    return operand.group(0) if operand else "an object weights-only loading does not allow"


def _brief(exc: BaseException) -> str:
    """``Type: first sentence`` of an exception from a parser, short, without advice to unpickle freely."""
    text = " ".join(str(exc).split())
    first = text.split(". ")[0][:200]
    if any(word in first for word in _ADVICE_WORDS):
        first = ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _torch_load(path: Path) -> object:
    mmap = zipfile.is_zipfile(path)  # mmap needs torch's zip format; legacy pickles are read whole
    kwargs = {"map_location": "cpu", "weights_only": True, "mmap": mmap}
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: no allow-list, plain weights_only
        return torch.load(path, **kwargs)
    try:
        context = safe_globals(_harmless_globals())
        with context:
            return torch.load(path, **kwargs)
    except TypeError as exc:  # torch without (object, name) pairs in the allow-list
        if "tuple" not in str(exc).lower():
            raise
        return torch.load(path, **kwargs)


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_LEGACY_PICKLES = 4  # torch's legacy format: magic number, protocol, system info, then the object


def _scan_pickle(stream, count: int) -> tuple[str | None, list[str]]:
    """Parse ``count`` pickles from ``stream`` without running anything: (why it is not whole, globals named).

    A truncated stream, an unknown opcode or garbage makes the first item a description; the
    second lists the ``module.name`` globals seen (for the message, best effort).
    """
    names: list[str] = []
    strings: list[str] = []
    memo: dict[int, object] = {}
    try:
        for index in range(count):
            if index:  # a stream may hold fewer pickles: it ends cleanly between two
                position = stream.tell()
                if not stream.read(1):
                    break
                stream.seek(position)
            for opcode, arg, _pos in pickletools.genops(stream):
                if opcode.name in _STRING_OPS:
                    strings.append(str(arg))
                elif opcode.name == "GLOBAL":
                    names.append(".".join(str(arg).split(" ", 1)))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                    memo[int(arg)] = strings[-1]
                elif opcode.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif opcode.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(memo.get(int(arg)), str):
                    strings.append(str(memo[int(arg)]))
    except Exception as exc:  # pickletools raises ValueError/EOFError/struct.error/... on damaged bytes
        return f"damaged pickle data: {_brief(exc)}", names
    return None, names


def _pickle_damage(path: Path) -> tuple[str | None, list[str]]:
    """Whether the pickle stream inside ``path`` is damaged (see :func:`_scan_pickle`); zip CRCs are checked."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [name for name in archive.namelist() if name.rsplit("/", 1)[-1] == "data.pkl"]
                if len(members) != 1:
                    return f"{len(members)} data.pkl records in the archive, expected 1", []
                with archive.open(members[0]) as stream:
                    result = _scan_pickle(stream, 1)
                    while stream.read(1 << 20):  # to the end, so that the CRC is checked
                        pass
                return result
        with open(path, "rb") as stream:
            return _scan_pickle(stream, _LEGACY_PICKLES)
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:  # BadZipFile: bad CRC
        return f"damaged archive: {_brief(exc)}", []


def _unreadable_pickle(path: Path, exc: pickle.UnpicklingError) -> IP2PError:
    """torch refused the pickle: damaged bytes, a real reference to code, or a pickle torch.save did not write."""
    damage, names = _pickle_damage(path)
    if damage:
        return _corrupt(path, damage)
    named = _GLOBAL_IN_MESSAGE.search(str(exc))
    if named and not _DOTTED_NAME.fullmatch(named.group(1)):
        return _corrupt(path, f"damaged pickle data: a garbled name {named.group(1)!r}")
    if named:
        return _refuse_code(path, f"a reference to {named.group(1)}")
    allowed = {name for _, name in _harmless_globals()} | {"collections.OrderedDict"}
    foreign = [name for name in names if not name.startswith("torch.") and name not in allowed]
    if foreign:
        return _refuse_code(path, f"a reference to {foreign[0]}")
    return IP2PError(
        f"{path} is a pickle this loader cannot read safely ({_pickle_problem(exc)}): it was not written by "
        f"torch.save with its default settings. Use a .safetensors version of this model, or re-save the "
        f"weights with torch.save(state_dict) where the file is trusted."
    )


def _tensors_only(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise IP2PError(
            f"{path} holds a {type(obj).__name__}, not a state dict of named tensors. "
            f"Expected a Stable Diffusion checkpoint (.ckpt/.safetensors)."
        )
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise IP2PError(f"{path} holds no tensors. Expected a Stable Diffusion checkpoint.")
    return tensors


def _corrupt(path: Path, detail: str) -> IP2PError:
    return IP2PError(
        f"{path} is truncated or corrupt and cannot be read ({detail}). Download or copy the file again; "
        f"if it was being written, wait until it is complete."
    )


# --------------------------------------------------------------------------------------------
# Bounded tensors: a pickle declares each tensor's size and strides over a stored buffer, and
# can declare far more elements than it stores (a stride of 0 repeats one value a billion
# times). Copying such a tensor (.contiguous(), a dtype cast, a .safetensors write) would
# materialise them all, so only tensors whose elements are distinct stored values are accepted.


def _overlapping(tensor: torch.Tensor) -> bool:
    """Whether two index tuples reach the same element (zero, negative or interleaved strides)."""
    reach = 0  # the furthest element offset the dimensions taken so far can reach
    for stride, size in sorted((st, sz) for sz, st in zip(tensor.shape, tensor.stride(), strict=True) if sz > 1):
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def _span_bytes(tensor: torch.Tensor) -> int:
    """Bytes from the storage's start up to the tensor's last element."""
    if tensor.numel() == 0:
        return 0
    last = tensor.storage_offset() + sum((sz - 1) * st for sz, st in zip(tensor.shape, tensor.stride(), strict=True))
    return (last + 1) * tensor.element_size()


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def require_bounded(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse tensors that declare more data than the file stores.

    Each tensor must be a view whose elements are distinct stored values, inside its storage; and
    the tensors that share one stored buffer must together need no more bytes than it holds, so
    copying every tensor out (``ip2p convert``) writes no more than the file stores.
    """
    fix = (
        "A checkpoint saved from a model's state_dict never has this; the file may be crafted or damaged. "
        "Use a .safetensors version of this model."
    )
    per_storage: dict[tuple[int, int], list[str]] = {}
    for key, tensor in tensors.items():
        if tensor.numel() == 0:
            continue
        storage = tensor.untyped_storage()
        if _overlapping(tensor) or any(st < 0 for st in tensor.stride()):
            raise IP2PError(
                f"{path}: tensor {key!r} repeats stored values (size {tuple(tensor.shape)} over strides "
                f"{tuple(tensor.stride())}, {storage.nbytes()} stored bytes); reading it would multiply the data. {fix}"
            )
        if tensor.storage_offset() < 0 or _span_bytes(tensor) > storage.nbytes():
            raise IP2PError(
                f"{path}: tensor {key!r} reaches past its stored data ({_span_bytes(tensor)} bytes needed, "
                f"{storage.nbytes()} stored). {fix}"
            )
        per_storage.setdefault((storage.data_ptr(), storage.nbytes()), []).append(key)
    for (_, stored), keys in per_storage.items():
        needed = sum(_nbytes(tensors[k]) for k in keys)
        if needed > stored:
            shown = ", ".join(repr(k) for k in keys[:4]) + (", ..." if len(keys) > 4 else "")
            raise IP2PError(
                f"{path}: tensors {shown} are overlapping views of one stored buffer ({needed} bytes of tensors over "
                f"{stored} stored bytes); reading them apart would multiply the data. Re-save the weights with each "
                f"tensor cloned (torch.save({{k: v.clone() for k, v in state_dict.items()}})) where the file is "
                f"trusted, or use a .safetensors version of this model."
            )


def load_single_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of an original-layout single file (``.safetensors``, or ``.ckpt``/``.pt``/``.pth``)."""
    path = Path(path)
    require_exists(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises SafetensorError / OSError on bad bytes
            raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc
    if suffix not in PICKLE_SUFFIXES + (".bin",):  # .bin: a diffusers component's pickled weights
        detect_format(path)  # raises the unknown-suffix message
    if path.is_dir():
        raise IP2PError(f"{path} is a folder, not a checkpoint file. Pass the .ckpt/.pt/.pth file itself.")
    try:
        obj = _torch_load(path)
    except pickle.UnpicklingError as exc:
        raise _unreadable_pickle(path, exc) from exc
    except MemoryError:
        raise
    except Exception as exc:  # torch's readers raise RuntimeError, KeyError, struct.error, UnicodeDecodeError, ...
        raise _corrupt(path, _brief(exc)) from exc
    tensors = _tensors_only(obj, path)
    require_bounded(tensors, path)
    return tensors


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], dst: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` to ``dst`` through a temporary file and a rename: never a half-written file.

    Tensors that share storage (which safetensors refuses) are copied apart first. ``metadata``
    defaults to ``{"format": "pt"}``; safetensors writes metadata keys in no fixed order, so pass
    one key where the same weights must give the same bytes (and the same model hash).
    """
    from safetensors.torch import save_file

    dst = Path(dst)
    seen: set[int] = set()
    clean: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel() > 0:
            tensor = tensor.clone()
        seen.add(pointer)
        clean[key] = tensor
    with atomic_file(dst) as tmp:
        try:
            save_file(clean, str(tmp), metadata=metadata if metadata is not None else {"format": "pt"})
        except OSError:
            raise  # atomic_file names dst
        except Exception as exc:  # safetensors reports write failures (disk full, ...) as its own error
            detail = " ".join(str(exc).replace(str(tmp), str(dst)).split())[:200]
            raise IP2PError(
                f"Cannot write {dst}: {type(exc).__name__}: {detail}. Check that the disk has space and the "
                f"folder is writable."
            ) from exc
    return dst


def convert_ckpt_to_safetensors(
    src: str | os.PathLike, dst: str | os.PathLike | None = None, *, overwrite: bool = False
) -> Path:
    """Rewrite a pickled checkpoint's weights as ``.safetensors`` (default: beside it, same stem).

    Only tensors are kept (the state dict); training state such as optimizer and callbacks is dropped.
    An existing ``dst`` is replaced only with ``overwrite``. Everything about ``dst`` is checked
    before the checkpoint is read, and the file written holds no more bytes of tensors than ``src``
    stores (see :func:`require_bounded`).
    """
    src = Path(src)
    accepted = ", ".join(PICKLE_SUFFIXES)
    if not src.exists():
        raise IP2PError(f"{src} does not exist. convert reads a pickled checkpoint ({accepted}): pass its path.")
    if src.is_dir() or src.suffix.lower() not in PICKLE_SUFFIXES:
        raise IP2PError(
            f"convert reads a pickled checkpoint ({accepted}), got {src}. "
            f"A .safetensors file or a diffusers folder needs no conversion: load it directly."
        )
    dst = Path(dst) if dst is not None else src.with_suffix(".safetensors")
    if dst.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise IP2PError(
            f"convert writes .safetensors, got the output path {dst}. Choose a path ending in .safetensors."
        )
    if dst.is_dir():
        raise IP2PError(f"The output {dst} is a folder. Give the path of the .safetensors file to write.")
    if dst.exists() and os.path.samefile(dst, src):
        raise IP2PError(f"The output {dst} is the checkpoint itself ({src}). Choose another output path.")
    if dst.exists() and not overwrite:
        raise IP2PError(f"{dst} already exists. Pass --overwrite to replace it, or choose another --out.")
    require_writable(dst)  # before the (possibly long) read
    tensors = load_single_file(src)
    logger.info("Writing %d tensors from %s to %s", len(tensors), src, dst)
    return save_safetensors_atomic(tensors, dst)


# --------------------------------------------------------------------------------------------
# Cheap facts about the UNet


def _single_file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the keys that identify the UNet, from a safetensors header when possible."""
    wanted = {UNET_IN_KEY, SDXL_MARKER_KEY, EDM_VPRED_KEY} | {CONTEXT_KEY.format(i) for i in (1, 4)}
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys() if k in wanted}
        except Exception as exc:
            raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc
    tensors = load_single_file(path)
    return {k: tuple(v.shape) for k, v in tensors.items() if k in wanted}


def _base_from_context(context_dim: int | None, sdxl_marker: bool) -> str:
    """SDXL has a size/crop embedding and a 2048-wide text context, SD 2.x a 1024-wide one; other
    SD-shaped UNets (768, or the small contexts of test models) follow SD 1.5's layout."""
    if sdxl_marker or context_dim == 2048:
        return "sdxl"
    if context_dim == 1024:
        return "sd2"
    return "sd15"


FOLDER_FIX = "Copy the file again from the model's source, or re-save the model with diffusers' save_pretrained."


def read_json_object(path: str | os.PathLike, fix: str = FOLDER_FIX) -> dict:
    """A JSON file that must hold an object (a diffusers config); anything else is an error naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise IP2PError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}). {fix}") from exc
    except OSError as exc:
        raise IP2PError(f"{path} cannot be read ({exc.strerror or type(exc).__name__}). {fix}") from exc
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise IP2PError(f"{path} is not valid JSON ({_brief(exc)}). {fix}") from exc
    if not isinstance(data, dict):
        raise IP2PError(f"{path} holds a JSON {type(data).__name__}, expected an object of settings. {fix}")
    return data


def _config_value(config: dict, key: str, kinds: tuple[type, ...], path: Path, default: object = None) -> object:
    """``config[key]`` when it has one of ``kinds`` (never a bool for an int), else an error naming the file."""
    value = config.get(key, default)
    if value is None or (isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)):
        return value
    expected = " or ".join(kind.__name__ for kind in kinds)
    raise IP2PError(f"{path}: {key!r} is {value!r}, expected {expected}. {FOLDER_FIX}")


def _context_dim(config: dict, path: Path) -> int | None:
    context = _config_value(config, "cross_attention_dim", (int, list), path)
    if isinstance(context, list):
        if not context or not all(isinstance(c, int) and not isinstance(c, bool) for c in context):
            raise IP2PError(f"{path}: 'cross_attention_dim' is {context!r}, expected integers. {FOLDER_FIX}")
        return context[0]
    return context


def read_unet_facts(path: str | os.PathLike) -> tuple[str, int, bool]:
    """(base architecture, UNet input channels, EDM v-prediction?) without loading the weights.

    A single file is read from its safetensors header (a pickle has to be loaded), a diffusers
    folder from ``unet/config.json`` and ``scheduler/scheduler_config.json``.
    """
    path = Path(path)
    if detect_format(path) == "diffusers":
        config_path = path / "unet" / "config.json"
        if not config_path.is_file():
            raise IP2PError(
                f"{path} has no unet/config.json, so its UNet cannot be identified. "
                f"Re-save the model with diffusers' save_pretrained, or copy the missing file."
            )
        config = read_json_object(config_path)
        context = _context_dim(config, config_path)
        sdxl = _config_value(config, "addition_embed_type", (str,), config_path) == "text_time"
        in_channels = _config_value(config, "in_channels", (int,), config_path, default=4)
        scheduler_path = path / "scheduler" / "scheduler_config.json"
        edm = False
        if scheduler_path.is_file():
            scheduler = read_json_object(scheduler_path)
            name = _config_value(scheduler, "_class_name", (str,), scheduler_path) or ""
            prediction = _config_value(scheduler, "prediction_type", (str,), scheduler_path)
            edm = name.startswith("EDM") and prediction == "v_prediction"
        return _base_from_context(context, sdxl), int(in_channels), edm
    shapes = _single_file_shapes(path)
    if UNET_IN_KEY not in shapes:
        raise IP2PError(
            f"{path} has no Stable Diffusion UNet in the original layout (no key {UNET_IN_KEY!r}). "
            f"Expected a full SD 1.5 / SDXL checkpoint (model.diffusion_model.*, first_stage_model.*, "
            f"cond_stage_model.*); for diffusers weights pass the model folder instead."
        )
    in_channels = shapes[UNET_IN_KEY][1]
    context = next((shapes[k][1] for k in (CONTEXT_KEY.format(1), CONTEXT_KEY.format(4)) if k in shapes), None)
    base = _base_from_context(context, SDXL_MARKER_KEY in shapes)
    return base, int(in_channels), EDM_VPRED_KEY in shapes


def inspect_model(path: str | os.PathLike) -> ModelFamily:
    """The model family of a checkpoint file or diffusers folder, read cheaply."""
    base, in_channels, edm = read_unet_facts(path)
    return classify(base, in_channels, edm)


# --------------------------------------------------------------------------------------------
# Our own metadata


def read_ip2p_metadata(path: str | os.PathLike) -> dict:
    """The ``ip2p`` metadata of a single file this toolkit wrote ({} for other files).

    It decides how the file's modules are built, so a damaged entry is an error naming the file,
    never a silent fallback to guessed configs.
    """
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            raw = (handle.metadata() or {}).get(META_KEY)
    except Exception as exc:  # safetensors raises its own error type on bad headers
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc
    if not raw:
        return {}
    try:
        metadata = json.loads(raw)
    except ValueError as exc:
        raise _bad_metadata(path, f"not JSON ({exc})") from exc
    if not isinstance(metadata, dict):
        raise _bad_metadata(path, f"a JSON {type(metadata).__name__}, not an object")
    configs = metadata.get("configs", {})
    if not isinstance(configs, dict) or not all(isinstance(configs.get(k, {}), dict) for k in CONFIG_PARTS):
        raise _bad_metadata(path, f"'configs' must map {', '.join(CONFIG_PARTS)} to JSON objects")
    if not isinstance(metadata.get("tokenizer", ""), str):
        raise _bad_metadata(path, "'tokenizer' must be text")
    return metadata


def _bad_metadata(path: Path, detail: str) -> IP2PError:
    return IP2PError(
        f"{path} has a damaged {META_KEY!r} metadata entry ({detail}). Re-export the model with this toolkit, "
        f"or remove the entry to load it with configs inferred from the weights."
    )

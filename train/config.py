"""The trainer's config: nested dataclasses with a comment on every default, one YAML file plus overrides.

``load_config("sd15", ["data.path=/data/ip2p", "max_steps=40"])`` reads a shipped config by name (or
a user's YAML file by path), applies dotted ``key=value`` overrides (values parsed as YAML scalars,
so ``5e-5`` is a float, ``null`` is None, ``[5, 7.5]`` a list) and checks every value. Unknown keys
are refused with the closest valid name. The resolved config is written as ``config.yaml`` in the
run folder and in every checkpoint, so a run describes itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ip2p.errors import IP2PError
from ip2p.training import check_dropout_rates

MIXED_PRECISION = ("no", "fp16", "bf16")
CONV_IN_MODES = ("off", "lora", "full")
LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class ModelConfig:
    # The starting point: a diffusers folder or single file of an SD 1.5 model (4-channel base, widened
    # to 8 channels; or an InstructPix2Pix model to continue), or "config:tiny" (random weights), or "config:toy"
    # (the toy architecture: random UNet and text encoder, the shipped toy VAE). No default.
    base: str | None = None


@dataclass
class DataConfig:
    # The dataset: the paper's folder layout, or parquet / `datasets` folders (ip2p.datasets.reader). No default.
    path: str | None = None
    # Training size in pixels: the shorter side is resized to it, then a square random crop (the paper: 256).
    resolution: int = 256
    # Probability of a horizontal flip, the same flip for both images of a pair (the paper: 0.5).
    flip: float = 0.5
    # Role -> column name for parquet/arrow datasets (roles: input_image, edit_prompt, edited_image); {} = defaults.
    columns: dict[str, str] = field(default_factory=dict)
    # The split of a hub-style parquet or DatasetDict folder; null = "train" when there are several.
    split: str | None = None
    # DataLoader worker processes per training process (0: load in the training process).
    num_workers: int = 0
    # Encode every example once per dataset and model (train/cache.py), both flip views, before training: the
    # frozen VAE and text encoder then cost nothing per step and leave the accelerator; crops become centre
    # crops. The cache is kept on disk and reused by later runs. false: encode every step (random crops).
    cache: bool = True
    # Where latent caches are kept, one folder per dataset, model and settings, shared by the runs of every
    # output_dir; null = ~/.cache/ip2p/latents (IP2P_CACHE_DIR/latents when that is set).
    cache_dir: str | None = None


@dataclass
class OptimConfig:
    # AdamW learning rate (the paper: 1e-4).
    lr: float = 1e-4
    # AdamW betas (diffusers' InstructPix2Pix script: 0.9, 0.999).
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # AdamW weight decay (diffusers' script: 1e-2).
    weight_decay: float = 1e-2
    # AdamW epsilon.
    eps: float = 1e-8
    # Gradient-norm clipping; null turns it off.
    max_grad_norm: float | None = 1.0
    # Linear learning-rate warm-up over this many optimizer steps (0: none).
    warmup_steps: int = 0
    # After the warm-up: constant (the paper), or cosine / linear decay to zero at max_steps (a short run
    # ends at its best weights instead of mid-stride; diffusers' --lr_scheduler).
    lr_schedule: str = "constant"
    # bitsandbytes' 8-bit AdamW (pip install bitsandbytes): the optimizer states take a quarter of the memory.
    adam_8bit: bool = False
    # Min-SNR-γ loss weighting (Hang et al. 2023): each sample's loss weighted by min(SNR, γ) over
    # what its target weights naturally, so the easy low-noise steps stop dominating; null = plain MSE.
    snr_gamma: float | None = None


@dataclass
class EMAConfig:
    # Keep an exponential moving average of the UNet and export it (the paper does).
    enabled: bool = True
    # The EMA decay (the paper's LDM code: 0.9999).
    decay: float = 0.9999
    # LDM's warm-up: decay = min(decay, (1 + n) / (10 + n)) at update n, so early weights do not dominate.
    warmup: bool = True


@dataclass
class DropoutConfig:
    # Probability of dropping the instruction only (the empty prompt's embedding instead; the paper: 0.05).
    text: float = 0.05
    # Probability of dropping the input image only (an all-zeros image latent; the paper: 0.05).
    image: float = 0.05
    # Probability of dropping both (the paper: 0.05). One uniform draw decides, so the cases are exclusive.
    both: float = 0.05


@dataclass
class ValidationConfig:
    # A validation grid every N optimizer steps and at the last step, in validation/step-N.png (0: never).
    every: int = 0
    # Input images of the grid (files, centre-cropped to data.resolution); [] = the first `count` training examples.
    images: list[str] = field(default_factory=list)
    # One instruction per validation image (required with `images`; [] with the training examples: their own).
    instructions: list[str] = field(default_factory=list)
    # How many training examples (in the dataset's file order) to validate on when `images` is empty.
    count: int = 4
    # Text guidance scales s_T; every (text_cfg, image_cfg) pair is one grid column.
    text_cfg: list[float] = field(default_factory=lambda: [7.5])
    # Image guidance scales s_I; every (text_cfg, image_cfg) pair is one grid column.
    image_cfg: list[float] = field(default_factory=lambda: [1.5])
    # Sampling steps per validation edit (Euler ancestral, the paper's sampler).
    steps: int = 20
    # The sampling seed, the same at every validation, so the grids of different steps compare.
    seed: int = 0
    # Examples edited (at the first text_cfg, image_cfg pair) and scored by `ip2p eval`'s metrics at every
    # validation, the means logged to metrics.jsonl and TensorBoard (0: no scoring).
    eval_count: int = 16
    # The held-out examples: a dataset in any layout data.path takes (read with data.columns; for one split of
    # a hub-style folder, give that split's files); null = the first eval_count training examples (not held out).
    eval_data: str | None = None
    # A local CLIP folder (transformers format) for the CLIP metrics; null skips them.
    clip: str | None = None
    # A local DINO ViT or Dinov2 folder for the DINO metric; null skips it.
    dino: str | None = None


@dataclass
class CheckpointsConfig:
    # Keep the newest N complete checkpoints (older complete ones are deleted); null keeps all.
    total_limit: int | None = 3
    # Also keep the checkpoint with the best held-out value of this metric (e.g. clip_i, l1, toy.inside_to_truth;
    # docs/metrics.md), lower or higher as the metric is better; null: the newest N only.
    keep_best: str | None = None


@dataclass
class ExportConfig:
    # Write export/model.safetensors in float16 (half the size; the diffusers folder stays float32).
    fp16: bool = False


@dataclass
class LoRAConfig:
    # LoRA rank on the UNet's attention projections (to_q, to_k, to_v, to_out.0 of attn1 and attn2);
    # 0 = full fine-tuning of the whole UNet. A LoRA run needs an InstructPix2Pix (8-channel) base.
    rank: int = 0
    # LoRA alpha: the update is scaled by alpha / rank; null = rank (scale 1).
    alpha: float | None = None
    # conv_in (the 8-channel input layer): "off" frozen (default: the adapter is attention-only, like
    # the usual SD 1.5 LoRAs, and reads the input image as the base does), "lora" a LoRA of the same
    # rank, "full" trained whole (23 k weights; the file stores their difference).
    conv_in: str = "off"


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoints: CheckpointsConfig = field(default_factory=CheckpointsConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # The run folder: config.yaml, metrics.jsonl, checkpoints/, export/.
    output_dir: str = "runs/ip2p"
    # Samples per process per micro-batch (global batch = batch_size x processes x accumulation steps).
    batch_size: int = 4
    # Micro-batches accumulated per optimizer step.
    gradient_accumulation_steps: int = 1
    # Optimizer steps in the whole run (the paper: 10,000 at a global batch of 1024).
    max_steps: int = 1000
    # A checkpoint and an export every N optimizer steps (and always at the end).
    save_every: int = 500
    # Seeds the data order, augmentation, noise, timesteps and dropout (per sample, whatever the process count).
    seed: int = 0
    # accelerate's mixed precision: "no", "fp16" or "bf16" (the UNet's master weights stay float32).
    mixed_precision: str = "no"
    # Trade compute for memory in the UNet's backward pass.
    gradient_checkpointing: bool = False


# Keys that may change when a run is resumed; every other key must match the run's own config.
RESUMABLE_KEYS = (
    "output_dir",
    "max_steps",
    "save_every",
    "checkpoints.",
    "validation.",
    "export.",
    "data.num_workers",
    "data.cache_dir",
)


# --------------------------------------------------------------------------------------------
# Schema: the dotted leaf keys and their types


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def schema(cls=TrainConfig, prefix: str = "") -> dict[str, Any]:
    """Every leaf key (``"optim.lr"``) with its type."""
    out: dict[str, Any] = {}
    hints = _hints(cls)
    for f in fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out.update(schema(kind, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = kind
    return out


def _sections(cls=TrainConfig, prefix: str = "") -> set[str]:
    hints = _hints(cls)
    out: set[str] = set()
    for f in fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.add(prefix + f.name)
            out |= _sections(hints[f.name], f"{prefix}{f.name}.")
    return out


def _unknown(key: str, where: str) -> IP2PError:
    valid = list(schema()) + sorted(_sections())
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return IP2PError(f"Unknown config key {key!r} in {where}.{hint} The trainer's keys are listed in train/config.py.")


def _flatten(data: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """Nested YAML mapping -> {dotted leaf key: value}, unknown keys refused."""
    leaves, sections = schema(), _sections()
    if not isinstance(data, dict):
        raise IP2PError(f"{where} must hold a mapping of config keys, got {type(data).__name__}.")
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if dotted in leaves:
            out[dotted] = value
        elif dotted in sections:
            if value is None:
                continue
            out.update(_flatten(value, where, dotted + "."))
        else:
            raise _unknown(dotted, where)
    return out


def _is_dict_type(kind: Any) -> bool:
    return typing.get_origin(kind) is dict or kind is dict


class _ConfigLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true / false. PyYAML follows YAML 1.1, where off, no, on and
    yes are booleans too, so ``lora.conv_in=off`` would arrive as False instead of the text "off"."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: plain data only


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=5e-5"`` -> ``("optim.lr", 5e-05)`` (the value parsed as a YAML scalar or flow list)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise IP2PError(f"Override {text!r} is not key=value; write e.g. data.path=/data/ip2p or max_steps=40.")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise IP2PError(f"Override {text!r}: the value is not valid YAML ({exc.problem}). Quote it.") from exc
    return key, value


def _apply_override(flat: dict[str, Any], key: str, value: Any) -> None:
    leaves = schema()
    if key in leaves:
        flat[key] = value
        return
    head, _, role = key.rpartition(".")
    if head in leaves and _is_dict_type(leaves[head]) and role:  # data.columns.edit_prompt=instruction
        mapping = dict(flat.get(head) or {})
        mapping[role] = value
        flat[head] = mapping
        return
    raise _unknown(key, "the overrides")


# --------------------------------------------------------------------------------------------
# Type checks


def _check_value(key: str, kind: Any, value: Any) -> Any:
    """``value`` checked (and, for harmless cases such as 1 for a float, converted) against ``kind``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _check_value(key, rest[0], value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise IP2PError(f"{key} must be true or false, got {value!r}.")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise IP2PError(f"{key} must be a whole number, got {value!r}.")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-5" (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        raise IP2PError(f"{key} must be a number, got {value!r}.")
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise IP2PError(f"{key} must be text, got {value!r}.")
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [_check_value(f"{key}[{i}]", args[0], v) for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise IP2PError(f"{key} must be a mapping, got {value!r}.")
        return {str(k): _check_value(f"{key}.{k}", args[1], v) for k, v in value.items()}
    raise TypeError(f"config: no rule for the type of {key}: {kind}")  # pragma: no cover - a new field type


def _build(cls, flat: dict[str, Any], prefix: str = ""):
    hints = _hints(cls)
    kwargs = {}
    for f in fields(cls):
        kind = hints[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(kind):
            kwargs[f.name] = _build(kind, flat, key + ".")
        elif key in flat:
            kwargs[f.name] = _check_value(key, kind, flat[key])
    return cls(**kwargs)


def validate(config: TrainConfig) -> TrainConfig:
    """Refuse values that cannot work (each message names the key and the fix)."""
    positive = {
        "data.resolution": config.data.resolution,
        "batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_steps": config.max_steps,
        "save_every": config.save_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise IP2PError(f"{key} is {value}; it must be at least 1.")
    if config.data.resolution % 8:
        raise IP2PError(f"data.resolution is {config.data.resolution}; use a multiple of 8 (the paper: 256).")
    if not 0.0 <= config.data.flip <= 1.0:
        raise IP2PError(f"data.flip is {config.data.flip}; give a probability from 0 to 1 (the paper: 0.5).")
    if config.data.num_workers < 0:
        raise IP2PError(f"data.num_workers is {config.data.num_workers}; give 0 or more.")
    check_dropout_rates(config.dropout.text, config.dropout.image, config.dropout.both)
    if config.mixed_precision not in MIXED_PRECISION:
        raise IP2PError(f"mixed_precision is {config.mixed_precision!r}; choose one of {', '.join(MIXED_PRECISION)}.")
    if not 0.0 <= config.ema.decay < 1.0:
        raise IP2PError(f"ema.decay is {config.ema.decay}; give a number in [0, 1) (the paper: 0.9999).")
    if config.optim.lr <= 0:
        raise IP2PError(f"optim.lr is {config.optim.lr}; give a positive learning rate (the paper: 1e-4).")
    if len(config.optim.betas) != 2:
        raise IP2PError(f"optim.betas is {config.optim.betas}; give two numbers, e.g. [0.9, 0.999].")
    if config.optim.warmup_steps < 0:
        raise IP2PError(f"optim.warmup_steps is {config.optim.warmup_steps}; give 0 or more.")
    if config.optim.lr_schedule not in LR_SCHEDULES:
        raise IP2PError(f"optim.lr_schedule is {config.optim.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}.")
    if config.optim.snr_gamma is not None and not config.optim.snr_gamma > 0:
        raise IP2PError(
            f"optim.snr_gamma is {config.optim.snr_gamma}; give a positive γ (the paper: 5) or null for plain MSE."
        )
    limit = config.checkpoints.total_limit
    if limit is not None and limit < 1:
        raise IP2PError(f"checkpoints.total_limit is {limit}; give 1 or more, or null to keep every checkpoint.")
    _check_validation(config.validation)
    _check_keep_best(config)
    _check_lora(config.lora)
    if config.data.columns:
        from ip2p.datasets.reader import resolve_columns

        resolve_columns(config.data.columns)
    return config


def _check_lora(lora: LoRAConfig) -> None:
    if lora.rank < 0:
        raise IP2PError(f"lora.rank is {lora.rank}; give 0 (full fine-tuning) or a LoRA rank such as 16.")
    if lora.conv_in not in CONV_IN_MODES:
        raise IP2PError(f"lora.conv_in is {lora.conv_in!r}; choose one of {', '.join(CONV_IN_MODES)}.")
    if lora.rank == 0 and (lora.conv_in != "off" or lora.alpha is not None):
        raise IP2PError(
            "lora.conv_in / lora.alpha are set but lora.rank is 0 (full fine-tuning trains every weight). Set "
            "lora.rank (e.g. lora.rank=16) for a LoRA run, or leave lora.conv_in=off and lora.alpha=null."
        )
    if lora.alpha is not None and not lora.alpha > 0:
        raise IP2PError(f"lora.alpha is {lora.alpha}; give a positive number, or null for alpha = rank.")


def _check_validation(v: ValidationConfig) -> None:
    """The validation section, checked only when validation is on (image files are read at setup)."""
    if v.every < 0:
        raise IP2PError(f"validation.every is {v.every}; give 0 (no validation) or a number of optimizer steps.")
    if not v.every:
        return
    from ip2p.guidance import check_scale
    from ip2p.headless.schedulers import MAX_STEPS

    if not 1 <= v.steps <= MAX_STEPS:
        raise IP2PError(f"validation.steps is {v.steps}; give a number of sampling steps from 1 to {MAX_STEPS}.")
    if v.seed < 0:
        raise IP2PError(f"validation.seed is {v.seed}; give a whole number of 0 or more.")
    for key in ("text_cfg", "image_cfg"):
        values = getattr(v, key)
        if not values:
            raise IP2PError(
                f"validation.{key} is empty; give one or more guidance scales, e.g. validation.{key}=[5, 7.5]."
            )
        for i, value in enumerate(values):
            check_scale(f"validation.{key}[{i}]", value)
    if v.eval_count < 0:
        raise IP2PError(f"validation.eval_count is {v.eval_count}; give 0 (no scoring) or a number of examples.")
    if v.images:
        if len(v.instructions) != len(v.images):
            raise IP2PError(
                f"validation.images has {len(v.images)} images but validation.instructions has "
                f"{len(v.instructions)} instructions; give one instruction per image, in the same order."
            )
    else:
        if v.instructions:
            raise IP2PError(
                f"validation.instructions has {len(v.instructions)} instructions but validation.images is empty; "
                f"give the images they belong to, or leave both empty to validate on the first validation.count "
                f"training examples with their own instructions."
            )
        if v.count < 1:
            raise IP2PError(
                f"validation.count is {v.count}; give 1 or more training examples to validate on (or set "
                f"validation.images and validation.instructions)."
            )


def _check_keep_best(config: TrainConfig) -> None:
    """``checkpoints.keep_best``: a metric this run's settings can compute (what its data lacks is checked at setup)."""
    name, v = config.checkpoints.keep_best, config.validation
    if name is None:
        return
    from ip2p.quality.metrics import ALL_METRICS
    from ip2p.quality.scoring import CLIP_METRICS

    if name not in ALL_METRICS:
        close = difflib.get_close_matches(name, ALL_METRICS, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise IP2PError(
            f"checkpoints.keep_best is {name!r}, not a metric.{hint} Choose one of {', '.join(ALL_METRICS)} "
            f"(docs/metrics.md), or null."
        )
    if not v.every or not v.eval_count:
        raise IP2PError(
            f"checkpoints.keep_best={name} needs the held-out scoring: set validation.every (e.g. "
            f"validation.every={config.save_every}) and validation.eval_count of 1 or more."
        )
    if name in CLIP_METRICS and v.clip is None:
        raise IP2PError(f"checkpoints.keep_best={name} is a CLIP metric: give validation.clip=<a local CLIP folder>.")
    if name == "dino" and v.dino is None:
        raise IP2PError("checkpoints.keep_best=dino needs validation.dino=<a local DINO ViT or Dinov2 folder>.")
    if config.save_every % v.every:
        raise IP2PError(
            f"checkpoints.keep_best={name}: save_every ({config.save_every}) is not a multiple of validation.every "
            f"({v.every}), so some checkpoints would have no score. Make save_every a multiple of validation.every."
        )


# --------------------------------------------------------------------------------------------
# Files


def shipped_configs() -> list[str]:
    """Names of the configs shipped with the trainer (``sd15``, ``toy``)."""
    folder = resources.files(__package__).joinpath("configs")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_config_text(name_or_path: str | Path) -> tuple[str, str]:
    """``(text, where)`` of a config given as a path to a YAML file or the name of a shipped config."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    name = str(name_or_path).removesuffix(".yaml")
    shipped = resources.files(__package__).joinpath("configs", f"{name}.yaml")
    if "/" not in name and shipped.is_file():
        return shipped.read_text(encoding="utf-8"), f"the shipped config {name!r}"
    raise IP2PError(
        f"Config {str(name_or_path)!r} is neither a YAML file nor a shipped config. Give a path, or one of: "
        f"{', '.join(shipped_configs())}."
    )


def config_from_dict(data: dict | None, where: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A checked config from a (nested) mapping plus overrides."""
    flat = _flatten(data or {}, where)
    for text in overrides:
        _apply_override(flat, *parse_override(text))
    if flat.get("mixed_precision") is False:  # YAML 1.1 reads a bare `no` as false
        flat["mixed_precision"] = "no"
    return validate(_build(TrainConfig, flat))


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The resolved config: a YAML file (or a shipped config's name), then ``key=value`` overrides."""
    text, where = read_config_text(name_or_path)
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise IP2PError(f"{where} is not valid YAML: {exc}. Fix the file.") from exc
    return config_from_dict(data, where, overrides)


def to_dict(config: TrainConfig) -> dict:
    return asdict(config)


def to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def read_saved_config(path: str | Path) -> TrainConfig:
    """A run's or a checkpoint's ``config.yaml``."""
    path = Path(path)
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise IP2PError(f"{path} is not valid YAML ({exc}); the run folder is damaged.") from exc
    return config_from_dict(data, str(path))


def flat(config: TrainConfig) -> dict[str, Any]:
    return _flatten(to_dict(config), "config")


def _resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS)


def differences(a: TrainConfig, b: TrainConfig, *, ignore_resumable: bool = True) -> list[str]:
    """``["optim.lr: 0.0001 -> 5e-05", ...]`` for keys that differ (keys a resume may change left out)."""
    fa, fb = flat(a), flat(b)
    return [
        f"{key}: {fa[key]!r} -> {fb[key]!r}"
        for key in fa
        if fa[key] != fb.get(key) and not (ignore_resumable and _resumable(key))
    ]

"""Random-weight models with real architectures, for tests, benchmarks and plumbing demos.

No pretrained weights can be downloaded where this project is tested, so every check runs on
models built here: "tiny" (seconds, 64 px), "sd15" (the full SD 1.5 architecture, which
ComfyUI detects by shape) or "toy" (the toy world's model, :mod:`.toy_model`). Weights are random
but deterministic in ``seed``; the full-size build skips the framework's slow initialisation and
fills parameters from a shared random pool, so it takes seconds instead of minutes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path

import torch

from ..errors import IP2PError
from ..formats.tokenizer import find_tokenizer_dir, load_clip_tokenizer, write_synthetic_clip_tokenizer
from ..model_family import classify
from . import libraries
from .components import EditModel

logger = logging.getLogger(__name__)

SIZES = ("tiny", "sd15", "toy")
_DIRECT_DRAW_LIMIT = 64_000_000  # parameters; above this, fill from a random pool (speed)
_POOL_SIZE = 8_388_593  # a prime, so repeats of the pool never line up with tensor rows


@cache
def _load_config_file(size: str) -> dict:
    text = resources.files(__package__).joinpath("configs", f"{size}.json").read_text(encoding="utf-8")
    return json.loads(text)


def architecture_config(size: str) -> dict:
    """The diffusers/transformers configs of a named architecture (a fresh copy).

    Keys: ``unet``, ``vae``, ``text_encoder`` (a CLIPTextConfig dict), ``scheduler``.
    """
    if size not in SIZES:
        raise IP2PError(f"Unknown model size {size!r}: expected one of {', '.join(SIZES)}.")
    config = copy.deepcopy(_load_config_file(size))
    config.pop("_comment", None)
    return config


def sd15_scheduler_config() -> dict:
    """SD 1.5's noise schedule (scaled_linear 0.00085..0.012, 1000 steps, epsilon, leading spacing)."""
    return architecture_config("sd15")["scheduler"]


def _std(param: torch.Tensor) -> float:
    """PyTorch's default (kaiming-uniform, a=sqrt(5)) standard deviation: 1/sqrt(3 * fan_in)."""
    fan_in = param[0].numel() if param.ndim > 1 else param.numel()
    return 1.0 / math.sqrt(3.0 * max(1, fan_in))


def fill_random_(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter with deterministic random values.

    Matrices and kernels: zero-mean, PyTorch's default scale for their fan-in. 1-D weights (norm
    gains): one. Biases: small noise. Large models draw from one pool of random numbers at random
    offsets; this is ~20x faster than drawing every value and the outputs stay finite and varied.
    """
    generator = torch.Generator().manual_seed(seed)
    named = sorted(module.named_parameters(), key=lambda item: item[0])
    total = sum(p.numel() for _, p in named)
    pool = None
    if total > _DIRECT_DRAW_LIMIT:
        pool = torch.randn(_POOL_SIZE, generator=generator)
    with torch.no_grad():
        for name, param in named:
            if param.ndim == 1 and name.endswith("weight"):
                param.fill_(1.0)
                continue
            std = 0.02 if param.ndim == 1 else _std(param)
            if pool is None:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
                continue
            flat = param.view(-1)
            offset = int(torch.randint(0, _POOL_SIZE, (1,), generator=generator))
            pos = 0
            while pos < flat.numel():
                take = min(flat.numel() - pos, _POOL_SIZE - offset)
                torch.mul(pool[offset : offset + take], std, out=flat[pos : pos + take])  # one pass over memory
                pos += take
                offset = 0


def _materialise(module: torch.nn.Module, seed: int, dtype: torch.dtype) -> torch.nn.Module:
    """Turn a module built on the meta device into a CPU module with random weights."""
    module = module.to_empty(device="cpu")
    for name, buffer in module.named_buffers():
        if name.endswith("position_ids"):
            buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
        else:  # pragma: no cover - guards a future architecture change
            raise RuntimeError(f"random model: no rule to initialise buffer {name}")
    fill_random_(module, seed)
    if dtype != torch.float32:
        module = module.to(dtype)
    return module.eval()


def build_modules(config: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple:
    """(unet, vae, text_encoder) with random weights from an :func:`architecture_config`-shaped dict."""
    diffusers, transformers = libraries()
    UNet2DConditionModel, AutoencoderKL = diffusers.UNet2DConditionModel, diffusers.AutoencoderKL
    CLIPTextModel, CLIPTextConfig = transformers.CLIPTextModel, transformers.CLIPTextConfig
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config["unet"])
        vae = AutoencoderKL(**config["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
    unet = _materialise(unet, seed * 3 + 0, dtype)
    vae = _materialise(vae, seed * 3 + 1, dtype)
    text_encoder = _materialise(text_encoder, seed * 3 + 2, dtype)
    return unet, vae, text_encoder


def _tokenizer_for(vocab_size: int):
    """The real CLIP tokenizer when one is installed and the vocabulary is CLIP's, else synthetic."""
    if vocab_size == 49408:
        try:
            folder = find_tokenizer_dir()
            return load_clip_tokenizer(folder), str(folder)
        except IP2PError as exc:
            logger.info("Using a synthetic CLIP vocabulary for the random model (%s)", exc)
    with tempfile.TemporaryDirectory(prefix="ip2p-tokenizer-") as tmp:
        write_synthetic_clip_tokenizer(tmp, vocab_size)
        return load_clip_tokenizer(tmp), f"synthetic:{vocab_size}"


def build_random_model(
    size: str = "tiny", in_channels: int = 8, seed: int = 0, *, dtype: torch.dtype = torch.float32
) -> EditModel:
    """A random-weight model of a named architecture ("tiny", "sd15" or "toy"), deterministic in ``seed``.

    ``in_channels`` 8 gives an InstructPix2Pix UNet, 4 a base model.
    """
    if in_channels not in (4, 8):
        raise IP2PError(f"in_channels must be 4 (base model) or 8 (InstructPix2Pix), got {in_channels}.")
    config = architecture_config(size)
    config["unet"]["in_channels"] = in_channels
    unet, vae, text_encoder = build_modules(config, seed, dtype)
    if size == "toy":  # the toy world's vocabulary: every toy word one token
        from ..formats.toy_vocab import toy_tokenizer

        tokenizer, tokenizer_source = toy_tokenizer(config["text_encoder"]["vocab_size"]), "toy"
    else:
        tokenizer, tokenizer_source = _tokenizer_for(config["text_encoder"]["vocab_size"])
    source = f"random:{size}:{in_channels}ch:seed{seed}"
    return EditModel(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=config["scheduler"],
        family=classify("sd15", in_channels),
        model_hash=hashlib.sha256(source.encode()).hexdigest()[:12],
        source=source,
        extra={"tokenizer_source": tokenizer_source},
    )


# --- a CLIP model for the data engine's filter ------------------------------------------------------

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, as every CLIP preprocessor_config.json
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_CLIP_VOCAB = 600
TINY_CLIP_IMAGE = 32


def clip_preprocessor_config(size: int = TINY_CLIP_IMAGE) -> dict:
    """``preprocessor_config.json`` as CLIP folders ship it (shortest side, bicubic, centre crop)."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 3,  # bicubic
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
    }


def save_random_clip(folder, seed: int = 0):
    """A tiny random-weight CLIPModel saved like a downloaded one (weights, config, tokenizer,
    image processor) in ``folder``: what the CLIP filter loads, for tests and benchmarks."""
    import transformers

    folder = Path(folder)
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=TINY_CLIP_VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=TINY_CLIP_VOCAB - 2,  # the synthetic tokenizer's start and end tokens
            eos_token_id=TINY_CLIP_VOCAB - 1,
            pad_token_id=TINY_CLIP_VOCAB - 1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=TINY_CLIP_IMAGE,
            patch_size=8,
        ),
        projection_dim=16,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformers.CLIPModel(config).save_pretrained(folder)
    write_synthetic_clip_tokenizer(folder, TINY_CLIP_VOCAB)
    (folder / "preprocessor_config.json").write_text(json.dumps(clip_preprocessor_config()), encoding="utf-8")
    return folder


def save_random_dino(folder, seed: int = 0):
    """A tiny random-weight ViT saved like a downloaded DINO (``facebook/dino-vits16``'s layout): what the DINO
    metric loads, for tests and benchmarks. It takes the 224 px crops DINO's preprocessing makes."""
    import transformers

    folder = Path(folder)
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=224, patch_size=32
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder

"""CLIP tokenizer files, found offline.

Stable Diffusion 1.5 uses the CLIP ViT-L/14 byte-level BPE tokenizer. A single-file checkpoint
carries no tokenizer, and nothing may be fetched from a hub, so its ``vocab.json`` and
``merges.txt`` come from (in this order) the model folder, ``IP2P_CLIP_TOKENIZER``, ComfyUI's
bundled ``comfy/sd1_tokenizer``, or the BPE list shipped in the ``open_clip_torch`` package
(converted here into the two files). Random-weight test models can use a synthetic vocabulary
with the same special-token ids.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
from pathlib import Path

from ..errors import IP2PError
from .atomic import atomic_dir
from .cache import cache_dir

logger = logging.getLogger(__name__)

ENV_TOKENIZER = "IP2P_CLIP_TOKENIZER"

CLIP_VOCAB_SIZE = 49408  # 512 byte tokens + 48894 merges + 2 special tokens
MIN_SYNTHETIC_VOCAB_SIZE = 514  # the 512 byte tokens and the 2 special tokens
CLIP_MAX_LENGTH = 77
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
OPEN_CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"

_FIX = (
    f"Install the package that carries the CLIP vocabulary (`pip install --no-deps open_clip_torch`), "
    f"or set {ENV_TOKENIZER} to a folder holding vocab.json and merges.txt (e.g. the tokenizer/ folder "
    f"of any Stable Diffusion 1.5 diffusers model)."
)


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; the others (control characters,
    space, ...) follow in byte order, shifted to code points from 256 upwards, so every byte has a
    visible, unique character. The order matters: it fixes the ids of the 512 byte tokens.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    others = [byte for byte in range(256) if byte not in table]
    for shift, byte in enumerate(others):
        table[byte] = chr(256 + shift)
    return table


def _base_tokens() -> list[str]:
    chars = list(bytes_to_unicode().values())
    return chars + [c + "</w>" for c in chars]


def _is_tokenizer_dir(folder: Path) -> bool:
    return (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()


def _write_atomic_dir(target: Path, fill) -> Path:
    """Create ``target`` by filling a temporary folder; a concurrent writer's finished copy is kept."""
    with atomic_dir(target, keep_existing=True) as tmp:
        fill(tmp)
    return target


def write_tokenizer_files(
    folder: str | os.PathLike, vocab: list[str], merges: list[tuple[str, str]], max_length: int = CLIP_MAX_LENGTH
) -> Path:
    """Write a CLIP tokenizer folder (vocab.json, merges.txt, configs) that
    ``CLIPTokenizer.from_pretrained(folder)`` and ComfyUI's SD1 tokenizer both read.

    ``vocab`` is in id order and must end with the start and end tokens; texts are padded to
    ``max_length`` tokens (CLIP's 77 unless a model was trained with another length).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if vocab[-2:] != [START_TOKEN, END_TOKEN]:
        raise ValueError("a CLIP vocabulary ends with the start and end tokens")
    encoder = {token: index for index, token in enumerate(vocab)}
    if len(encoder) != len(vocab):
        raise ValueError("duplicate tokens in the vocabulary")
    (folder / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    specials = {
        "bos_token": START_TOKEN,
        "eos_token": END_TOKEN,
        "unk_token": END_TOKEN,
        "pad_token": END_TOKEN,
    }
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **specials,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    return folder


# Words the synthetic vocabulary spells as single tokens, so test prompts tokenize to few ids.
_SYNTHETIC_WORDS = (
    "a an the of and to in on with make turn it him her them into red blue green yellow black white "
    "circle square triangle photo image picture cat dog man woman house tree sky car add remove "
    "change color background winter summer night day painting style"
).split()


def synthetic_clip_vocab(vocab_size: int = CLIP_VOCAB_SIZE) -> tuple[list[str], list[tuple[str, str]]]:
    """A deterministic byte-level BPE vocabulary of ``vocab_size`` tokens, CLIP-shaped.

    Byte tokens first (as in CLIP), merges that spell a few common words, filler tokens that no
    merge produces, and the start/end tokens last (ids 49406/49407 at the real size).
    """
    base = _base_tokens()
    if vocab_size < MIN_SYNTHETIC_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_SYNTHETIC_VOCAB_SIZE}, got {vocab_size}")
    vocab = list(base)
    known = set(vocab)
    merges: list[tuple[str, str]] = []
    budget = vocab_size - 2
    for word in _SYNTHETIC_WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        # Merge left to right: "c a t</w>" -> "ca t</w>" -> "cat</w>".
        while len(symbols) > 1 and len(vocab) < budget:
            pair = (symbols[0], symbols[1])
            merged = pair[0] + pair[1]
            if merged not in known:
                merges.append(pair)
                vocab.append(merged)
                known.add(merged)
            symbols = [merged, *symbols[2:]]
    filler = 0
    while len(vocab) < budget:
        vocab.append(f"<|ip2p_unused_{filler}|>")
        filler += 1
    vocab += [START_TOKEN, END_TOKEN]
    return vocab, merges


def write_synthetic_clip_tokenizer(folder: str | os.PathLike, vocab_size: int = CLIP_VOCAB_SIZE) -> Path:
    """Write a synthetic CLIP tokenizer (for random-weight models) into ``folder``."""
    vocab, merges = synthetic_clip_vocab(vocab_size)
    return write_tokenizer_files(folder, vocab, merges)


def clip_vocab_from_bpe_list(bpe_gz: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.

    The list holds far more merges than CLIP uses: CLIP keeps the first 48894 (after the header
    line), its vocabulary is the 512 byte tokens, one token per merge, then the two specials.
    """
    n_merges = CLIP_VOCAB_SIZE - 512 - 2
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]
    if len(merges) != n_merges or any(len(m) != 2 for m in merges):
        raise IP2PError(f"{bpe_gz} is not a CLIP BPE list (expected {n_merges} merge pairs after the header). {_FIX}")
    vocab = _base_tokens() + ["".join(m) for m in merges] + [START_TOKEN, END_TOKEN]
    return vocab, merges  # type: ignore[return-value]


def tokenizer_from_open_clip(bpe_gz: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """The CLIP tokenizer folder derived from open_clip's BPE list, built once and cached."""
    bpe_gz = Path(bpe_gz)
    stat = bpe_gz.stat()
    target = Path(cache) if cache is not None else cache_dir() / "clip_tokenizer" / f"open_clip-{stat.st_size}"
    if _is_tokenizer_dir(target):
        return target

    def fill(tmp: Path) -> None:
        vocab, merges = clip_vocab_from_bpe_list(bpe_gz)
        write_tokenizer_files(tmp, vocab, merges)

    logger.info("Deriving the CLIP tokenizer from %s into %s", bpe_gz, target)
    return _write_atomic_dir(target, fill)


def _package_dir(name: str) -> Path | None:
    """The folder of an importable package, without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_tokenizer_dir(model_path: str | os.PathLike | None = None) -> Path:
    """A folder with the CLIP tokenizer's vocab.json and merges.txt, found offline."""
    tried: list[str] = []
    if model_path is not None:
        folder = Path(model_path)
        candidate = folder / "tokenizer" if folder.is_dir() else None
        if candidate is not None:
            if _is_tokenizer_dir(candidate):
                return candidate
            tried.append(str(candidate))
    env = os.environ.get(ENV_TOKENIZER)
    if env:
        if _is_tokenizer_dir(Path(env)):
            return Path(env)
        raise IP2PError(
            f"{ENV_TOKENIZER} is set to {env!r}, which has no vocab.json and merges.txt. "
            f"Point it at a CLIP tokenizer folder, or unset it to use an installed vocabulary."
        )
    tried.append(f"${ENV_TOKENIZER} (unset)")
    comfy = _package_dir("comfy")
    if comfy is not None:
        candidate = comfy / "sd1_tokenizer"
        if _is_tokenizer_dir(candidate):
            return candidate
        tried.append(str(candidate))
    open_clip = _package_dir("open_clip")
    if open_clip is not None and (open_clip / OPEN_CLIP_BPE).is_file():
        return tokenizer_from_open_clip(open_clip / OPEN_CLIP_BPE)
    tried.append(f"open_clip/{OPEN_CLIP_BPE} (open_clip not installed)")
    raise IP2PError(f"No CLIP tokenizer vocabulary found (looked in: {'; '.join(tried)}). {_FIX}")


def load_clip_tokenizer(folder: str | os.PathLike):
    """``transformers.CLIPTokenizer`` from a local folder (never a hub id)."""
    try:
        from transformers import CLIPTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise IP2PError("The headless backend needs transformers: pip install 'comfyui-ip2p[headless]'") from exc
    folder = Path(folder)
    if not (_is_tokenizer_dir(folder) or (folder / "tokenizer.json").is_file()):
        raise IP2PError(
            f"{folder} is not a CLIP tokenizer folder: it needs vocab.json and merges.txt (or tokenizer.json). {_FIX}"
        )
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.model_max_length > CLIP_MAX_LENGTH:
        # A folder that states no length gets transformers' "unlimited" (1e30): texts would be padded
        # to that, and an export would write it on. CLIP's text encoder has 77 positions.
        tokenizer.model_max_length = CLIP_MAX_LENGTH
    return tokenizer

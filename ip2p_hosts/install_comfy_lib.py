"""Completes the ComfyUI library host that tests/comfy_lib and bench/ use (PyPI's notcomfy, ComfyUI's `comfy` of 2024-11).

scripts/test.sh installs notcomfy and torchvision with ``pip install --no-deps --target DIR`` (and
open_clip_torch, with --no-deps, into the venv); this step then makes DIR usable as a library:

- notcomfy ships no data files, so ``comfy/sd1_clip_config.json`` (the CLIP ViT-L/14 text encoder's
  hyper-parameters, written from the published values below) and ``comfy/sd1_tokenizer/`` (the real
  CLIP BPE vocabulary, derived by ``ip2p.formats.tokenizer`` from the ``bpe_simple_vocab_16e6.txt.gz``
  that the installed open_clip package carries) are written here.
- notcomfy also installs ComfyUI's server-side top-level folders (``tests``, ``utils``, ``models``,
  ``app``, ``input``, ...). Only ``comfy``, ``comfy_extras`` and ``comfy_execution`` form the library,
  so the rest is removed: nothing else in DIR can shadow a module of ours.

Usage: python -m ip2p_hosts.install_comfy_lib DIR   (idempotent; ip2p_hosts.comfy_lib then sets the host up)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
from pathlib import Path

from ip2p.formats.tokenizer import OPEN_CLIP_BPE, clip_vocab_from_bpe_list, write_tokenizer_files

logger = logging.getLogger("install_comfy_lib")

# The text tower of OpenAI's CLIP ViT-L/14 (Stable Diffusion 1.5's text encoder). ComfyUI reads
# the layer sizes, the activation, the number of positions and the end token (for the pooled output).
SD1_CLIP_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
    "torch_dtype": "float32",
}

LIBRARY_PACKAGES = {"comfy", "comfy_extras", "comfy_execution"}
NOTCOMFY_TOP_LEVEL = "notcomfy-*.dist-info/top_level.txt"


def open_clip_bpe_list() -> Path:
    """open_clip's BPE list, located without importing open_clip (whose dependencies are not installed)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install_comfy_lib: open_clip is not installed: pip install --no-deps open_clip_torch")
    return Path(next(iter(spec.submodule_search_locations))) / OPEN_CLIP_BPE


def write_data_files(target: Path) -> None:
    """The CLIP config and tokenizer folder that ``comfy.sd1_clip`` opens next to its own source."""
    comfy = target / "comfy"
    (comfy / "sd1_clip_config.json").write_text(json.dumps(SD1_CLIP_CONFIG, indent=2) + "\n", encoding="utf-8")
    vocab, merges = clip_vocab_from_bpe_list(open_clip_bpe_list())
    write_tokenizer_files(comfy / "sd1_tokenizer", vocab, merges)


def prune_server_folders(target: Path) -> None:
    """Remove every top-level folder notcomfy installs besides the library packages."""
    listings = list(target.glob(NOTCOMFY_TOP_LEVEL))
    if not listings:
        raise SystemExit(f"install_comfy_lib: no notcomfy installed in {target} (expected {NOTCOMFY_TOP_LEVEL})")
    names = set(listings[0].read_text(encoding="utf-8").split()) - LIBRARY_PACKAGES
    for name in sorted(names):
        path = target / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="the --target folder notcomfy was installed into")
    target = parser.parse_args().target
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prune_server_folders(target)
    write_data_files(target)
    logger.info("ComfyUI library host ready in %s", target)


if __name__ == "__main__":
    main()

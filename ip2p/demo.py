"""The embedded default job: ``ip2p edit`` end to end on a model built from configs.

Until the trainer's toy model exists, the default model is a *small model with random weights*:
the demo proves the plumbing (build, save, load, dual-guidance sampling, PNG metadata), not the
quality of an edit — the output is noise shaped by random weights, and says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

DEMO_SIZE = 64  # the tiny model's native size (its VAE downsamples ×2)
DEMO_INSTRUCTION = "make the circle red"


def render_input(size: int = DEMO_SIZE) -> Image.Image:
    """A blue circle on a light background: the kind of scene the trainer's toy world renders."""
    image = Image.new("RGB", (size, size), (235, 235, 225))
    draw = ImageDraw.Draw(image)
    margin = size // 5
    draw.ellipse((margin, margin, size - margin, size - margin), fill=(40, 70, 200))
    return image


def prepare(out_dir: Path) -> tuple[Path, Path]:
    """The random-weight model folder and the input image, built once and reused."""
    from .loading import save_diffusers
    from .random_model import build_random_model

    model_dir = out_dir / "random-tiny-ip2p"
    if not (model_dir / "model_index.json").is_file():
        logger.info("Building a tiny InstructPix2Pix model with random weights in %s", model_dir)
        save_diffusers(build_random_model("tiny", in_channels=8, seed=0), model_dir)
    input_path = out_dir / "input.png"
    if not input_path.is_file():
        render_input().save(input_path)
    return model_dir, input_path


def edit_arguments(model_dir: Path, input_path: Path, out_path: Path, steps: int, seed: int) -> list[str]:
    return [
        "edit", "--model", str(model_dir), "--image", str(input_path), "--instruction", DEMO_INSTRUCTION,
        "--out", str(out_path), "--steps", str(steps), "--seed", str(seed), "--max-side", str(DEMO_SIZE),
    ]  # fmt: skip

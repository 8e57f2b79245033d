"""``ip2p demo``, the embedded default job: ``ip2p edit`` end to end on a model built from configs.

Until the trainer's toy model exists, the default model is a *small model with random weights*:
the demo proves the plumbing (build, save, load, dual-guidance sampling, PNG metadata), not the
quality of an edit — the output is noise shaped by random weights, and says so.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from PIL import Image, ImageDraw

from . import edit

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
    from ..headless.export import save_diffusers
    from ..headless.random_model import build_random_model

    model_dir = out_dir / "random-tiny-ip2p"
    if not (model_dir / "model_index.json").is_file():
        logger.info("Building a tiny InstructPix2Pix model with random weights in %s", model_dir)
        save_diffusers(build_random_model("tiny", in_channels=8, seed=0), model_dir)
    input_path = out_dir / "input.png"
    if not input_path.is_file():
        render_input().save(input_path)
    return model_dir, input_path


def edit_arguments(model_dir: Path, input_path: Path, out_path: Path, steps: int, seed: int) -> list[str]:
    """The ``ip2p edit`` arguments the demo runs."""
    return [
        "--model", str(model_dir), "--image", str(input_path), "--instruction", DEMO_INSTRUCTION,
        "--out", str(out_path), "--steps", str(steps), "--seed", str(seed), "--max-side", str(DEMO_SIZE),
    ]  # fmt: skip


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "demo",
        parents=[common],
        help="run `ip2p edit` on the embedded default model (random weights: plumbing only)",
        description="Build the embedded default model and edit a rendered image with it. The default model has "
        "random weights until the trainer's toy model ships: the output proves the pipeline, not edit quality.",
    )
    p.add_argument("--out", default="out/demo", help="folder for the model, input.png and edited.png")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    model_dir, input_path = prepare(out_dir)
    edited = out_dir / "edited.png"
    edit_args = edit.parse_arguments(edit_arguments(model_dir, input_path, edited, args.steps, args.seed))
    edit_args.quiet = args.quiet  # no step bar under -q
    status = edit.run(edit_args)
    if status == 0:
        logger.info(
            "Demo done: %s -> %s. The embedded model has RANDOM weights (built from configs), so the edit is "
            "noise: this run checks the plumbing, not the quality.",
            input_path,
            edited,
        )
    return status

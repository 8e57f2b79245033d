"""``ip2p edit``: one image or a folder of images, edited by one instruction.

Everything that can be checked is checked before the model loads (settings, inputs decoded, output
names), so a mistake costs seconds and writes nothing.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .. import __version__, devices, guidance, sizing
from ..errors import IP2PError
from ..headless import schedulers

logger = logging.getLogger(__name__)


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "edit",
        parents=[common],
        help="edit an image (or a folder of images) by a written instruction",
        description="Edit images with an InstructPix2Pix model and dual classifier-free guidance.",
    )
    p.add_argument("--model", required=True, help="single-file checkpoint (.safetensors/.ckpt) or diffusers folder")
    p.add_argument("--image", required=True, help="input image, or a folder of images (each edited at its own size)")
    p.add_argument("--instruction", required=True, help='the edit, e.g. "make it winter"; empty returns the input')
    p.add_argument("--out", required=True, help="output .png (or folder, for a folder input)")
    p.add_argument("--negative", default="", help='the "no text" conditioning (default: empty)')
    p.add_argument("--steps", type=int, default=100, help="sampling steps (default: 100, as the paper)")
    p.add_argument("--text-cfg", type=float, default=guidance.DEFAULT_TEXT_CFG, help="s_T, text guidance (7.5)")
    p.add_argument("--image-cfg", type=float, default=guidance.DEFAULT_IMAGE_CFG, help="s_I, image guidance (1.5)")
    p.add_argument(
        "--sampler", default="euler_ancestral", help=f"ComfyUI sampler name: {', '.join(schedulers.SAMPLER_NAMES)}"
    )
    p.add_argument(
        "--scheduler", default="normal", help=f"ComfyUI scheduler name: {', '.join(schedulers.SCHEDULER_NAMES)}"
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (diffusers' convention; default 0)")
    p.add_argument(
        "--resize",
        default="paper",
        choices=sizing.RESIZE_POLICIES,
        help="paper: long side to --max-side; keep: input size",
    )
    p.add_argument("--max-side", type=int, default=sizing.DEFAULT_MAX_SIDE, help="long side for --resize paper (512)")
    p.add_argument(
        "--max-input-side",
        type=int,
        default=sizing.DEFAULT_MAX_INPUT_SIDE,
        help=f"refuse inputs with a longer side (default {sizing.DEFAULT_MAX_INPUT_SIDE})",
    )
    p.add_argument("--batch", type=int, default=1, help="edit up to N images of equal size per model call (1)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, mps …")
    p.add_argument("--dtype", default="auto", choices=devices.DTYPES, help="auto: float16 on GPU, float32 on CPU")
    p.set_defaults(handler=run)


def _settings(args: argparse.Namespace):
    from ..headless.editor import EditSettings

    return EditSettings(
        instruction=args.instruction,
        negative=args.negative,
        steps=args.steps,
        text_cfg=args.text_cfg,
        image_cfg=args.image_cfg,
        sampler=args.sampler,
        scheduler=args.scheduler,
        seed=args.seed,
        resize=args.resize,
        max_side=args.max_side,
        max_input_side=args.max_input_side,
    )


def collect_inputs(image: Path) -> tuple[list[Path], bool]:
    """The images to edit and whether the input is a folder; non-image files are skipped with a warning."""
    from ..images import is_image_file

    if not image.exists():
        raise IP2PError(f"Input not found: {image}. Pass an image file or a folder of images.")
    if not image.is_dir():
        return [image], False
    found: list[Path] = []
    for path in sorted(image.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if is_image_file(path):
            found.append(path)
        else:
            logger.warning("Skipping %s: not an image", path)
    if not found:
        raise IP2PError(f"No images in the folder {image}. Put PNG/JPEG/WebP/TIFF files there, or pass one file.")
    return found, True


def plan_outputs(inputs: list[Path], folder_input: bool, out: Path) -> list[Path]:
    """Where each edit goes: OUT itself, or OUT/<name>.png (OUT a folder) — never onto an input."""
    if folder_input or out.is_dir():
        if out.exists() and not out.is_dir():
            raise IP2PError(f"--out {out} is a file, but the input is a folder. Pass a folder for --out.")
        stems = [p.stem for p in inputs]
        targets = [
            out / (f"{p.stem}.png" if stems.count(p.stem) == 1 else f"{p.name.replace('.', '_')}.png") for p in inputs
        ]
    else:
        if out.suffix.lower() != ".png":
            raise IP2PError(
                f"--out {out} must end in .png: edits are written as PNG with their settings. Give a .png path."
            )
        targets = [out]
    resolved_inputs = {p.resolve() for p in inputs}
    for target in targets:
        if target.resolve() in resolved_inputs:
            raise IP2PError(f"--out would overwrite the input {target}. Choose another output path.")
    return targets


def preflight(inputs: list[Path], max_input_side: int) -> None:
    """Decode every input once before anything is written: a bad image stops the run, not half of it."""
    from ..images import load_image

    for path in inputs:
        try:
            load_image(path, max_input_side=max_input_side)
        except IP2PError as exc:
            if str(path) in str(exc):
                raise
            raise IP2PError(f"{path}: {exc}") from exc


def group_by_size(inputs: list[Path], batch: int) -> list[list[int]]:
    """Indices of inputs grouped by (width, height), in chunks of at most ``batch``, input order kept."""
    from ..images import image_size

    groups: dict[tuple[int, int], list[int]] = {}
    for index, path in enumerate(inputs):
        groups.setdefault(image_size(path), []).append(index)
    chunks = [members[i : i + batch] for members in groups.values() for i in range(0, len(members), batch)]
    return sorted(chunks, key=lambda chunk: chunk[0])


def edit_metadata(settings, model, source: Path, batch_size: int, batch_index: int) -> dict:
    """What a PNG records: enough to reproduce the edit and to know which model made it."""
    return {
        "instruction": settings.instruction,
        "negative": settings.negative,
        "seed": settings.seed,
        "steps": settings.steps,
        "text_cfg": settings.text_cfg,
        "image_cfg": settings.image_cfg,
        "sampler": settings.sampler,
        "scheduler": settings.scheduler,
        "resize": settings.resize,
        "max_side": settings.max_side,
        "model_hash": model.model_hash,
        "model": Path(model.source).name if model.source else "",
        "source_image": source.name,
        "batch_size": batch_size,
        "batch_index": batch_index,
        "ip2p_version": __version__,
    }


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.batch < 1:
        raise IP2PError(f"--batch is {args.batch}; give a whole number ≥ 1.")
    device = devices.resolve_device(args.device)
    dtype = devices.resolve_dtype(args.dtype, device)
    inputs, folder_input = collect_inputs(Path(args.image))
    targets = plan_outputs(inputs, folder_input, Path(args.out))
    preflight(inputs, settings.max_input_side)
    chunks = group_by_size(inputs, args.batch)

    import torch

    from ..headless.editor import edit
    from ..headless.loading import load_edit_model
    from ..images import load_image, save_png

    if settings.is_empty:
        logger.warning("The instruction is empty: the images are written unchanged.")
    model = load_edit_model(args.model, require_edit=True, device=str(device), dtype=dtype)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)

    bar = _image_bar(len(inputs), show=len(inputs) > 1)
    try:
        for chunk in chunks:
            batch = torch.cat([load_image(inputs[i], max_input_side=settings.max_input_side) for i in chunk])
            edited = edit(model, batch, settings, progress=not args.quiet)
            for row, index in enumerate(chunk):
                metadata = edit_metadata(settings, model, inputs[index], len(chunk), row)
                save_png(edited[row], targets[index], metadata)
                logger.info("Wrote %s", targets[index])
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return 0


def _image_bar(total: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="images", unit="img")

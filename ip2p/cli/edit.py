"""``ip2p edit``: one image or a folder of images, edited by one instruction (or a chain of them).

Everything that can be checked is checked before the model loads (settings, inputs decoded, output
names), so a mistake costs seconds and writes nothing. An output that exists already is refused
unless ``--overwrite``. In a folder, an image that cannot be read does not stop the others: every
readable image is edited and written, then the run exits non-zero naming the ones that failed.
With ``--auto-cfg`` each image is edited at every setting of a small (text_cfg, image_cfg) sweep and
the edit that :mod:`ip2p.quality.auto_cfg`'s rule keeps is written, its PNG recording the sweep's scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections import Counter
from pathlib import Path

from .. import __version__, devices, guidance, sizing
from ..errors import IP2PError
from ..formats.atomic import require_writable
from ..headless import schedulers
from . import lora

logger = logging.getLogger(__name__)

MAX_BATCH = 64  # images per model call; more only adds memory, not speed


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "edit",
        parents=[common],
        help="edit an image (or a folder of images) by a written instruction",
        description="Edit images with an InstructPix2Pix model and dual classifier-free guidance.",
    )
    p.add_argument("--model", required=True, help="single-file checkpoint (.safetensors/.ckpt) or diffusers folder")
    p.add_argument("--image", required=True, help="input image, or a folder of images (each edited at its own size)")
    p.add_argument(
        "--instruction",
        required=True,
        action="append",
        help='the edit, e.g. "make it winter"; empty returns the input. Given several times, the edits are chained: '
        "each instruction edits the result of the one before (multi-turn editing)",
    )
    p.add_argument("--out", required=True, help="output .png (or folder, for a folder input)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs that already exist (without it an existing output is refused before anything runs)",
    )
    p.add_argument("--negative", default="", help='the "no text" conditioning (default: empty)')
    p.add_argument(
        "--steps",
        type=int,
        default=100,
        help=f"sampling steps, 1 to {schedulers.MAX_STEPS} (default: 100, as the paper)",
    )
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
    p.add_argument(
        "--max-side",
        type=int,
        default=None,
        help=f"long side for --resize paper (default: the input's long side rounded up to a multiple of 64, at most "
        f"the model's own size, its UNet's sample_size × the VAE's factor: 512 for SD 1.5, 64 for the toy model; "
        f"at most {sizing.MAX_MAX_SIDE}); recorded in the PNG",
    )
    p.add_argument(
        "--max-input-side",
        type=int,
        default=sizing.DEFAULT_MAX_INPUT_SIDE,
        help=f"refuse inputs with a longer side (default {sizing.DEFAULT_MAX_INPUT_SIDE}, at most {sizing.MAX_MAX_INPUT_SIDE})",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help=f"edit up to N images of equal size per model call (1; at most {MAX_BATCH}); the result does not depend on it",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, mps …")
    p.add_argument("--dtype", default="auto", choices=devices.DTYPES, help="auto: float16 on GPU, float32 on CPU")
    lora.add_lora_options(p)
    add_auto_cfg_options(p)
    p.set_defaults(handler=run)


def add_auto_cfg_options(p: argparse.ArgumentParser) -> None:
    from ..quality.auto_cfg import DEFAULT_IMAGE_CFG_VALUES, DEFAULT_MIN_IMAGE_SIMILARITY, DEFAULT_TEXT_CFG_VALUES

    auto = p.add_argument_group(
        "automatic guidance",
        "edit each image at every (text_cfg, image_cfg) of a small sweep, score each edit with CLIP and keep one: the "
        "highest directional similarity whose image similarity reaches a floor (docs/metrics.md)",
    )
    auto.add_argument(
        "--auto-cfg",
        action="store_true",
        help="choose text_cfg and image_cfg per image by that rule (instead of --text-cfg and --image-cfg); needs "
        "--clip, --input-caption and --edited-caption",
    )
    auto.add_argument("--clip", default=None, help="a local CLIP folder (transformers format) that scores the sweep")
    auto.add_argument("--input-caption", default=None, help='what the input shows, e.g. "a photo of a house"')
    auto.add_argument(
        "--edited-caption", default=None, help='what the edit should show, e.g. "a photo of a house in winter"'
    )
    auto.add_argument(
        "--auto-text-cfg",
        default=None,
        help=f"the sweep's text_cfg values ({','.join(f'{v:g}' for v in DEFAULT_TEXT_CFG_VALUES)})",
    )
    auto.add_argument(
        "--auto-image-cfg",
        default=None,
        help=f"the sweep's image_cfg values ({','.join(f'{v:g}' for v in DEFAULT_IMAGE_CFG_VALUES)})",
    )
    auto.add_argument(
        "--min-image-similarity",
        type=float,
        default=None,
        help=f"the floor of CLIP image similarity, input vs edit ({DEFAULT_MIN_IMAGE_SIMILARITY:g}, the paper's "
        f"filter threshold)",
    )


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """``ip2p edit``'s own arguments parsed alone, for commands that run an edit (the demo)."""
    parser = argparse.ArgumentParser(prog="ip2p")
    add(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    return parser.parse_args(["edit", *argv])


def _settings(args: argparse.Namespace):
    from ..headless.editor import EditSettings

    return EditSettings(
        instruction=args.instruction[0],
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


AUTO_ONLY = ("clip", "input_caption", "edited_caption", "auto_text_cfg", "auto_image_cfg", "min_image_similarity")


@dataclasses.dataclass(frozen=True)
class AutoGuidance:
    """``--auto-cfg``'s sweep and scorer, checked before anything loads."""

    cells: tuple[tuple[float, float], ...]  # (text_cfg, image_cfg), row-major
    min_image_similarity: float
    clip: Path
    input_caption: str
    edited_caption: str


def auto_guidance(args: argparse.Namespace) -> AutoGuidance | None:
    """``--auto-cfg``'s settings (None without it), or an error naming the option to add or drop."""
    from ..grid import parse_scales
    from ..quality import auto_cfg

    given = [f"--{name.replace('_', '-')}" for name in AUTO_ONLY if getattr(args, name, None) is not None]
    if not getattr(args, "auto_cfg", False):
        if given:
            raise IP2PError(f"{', '.join(given)} apply only with --auto-cfg: add --auto-cfg, or leave them out.")
        return None
    if len(args.instruction) > 1:
        raise IP2PError(
            f"--auto-cfg chooses the scales of one edit, but --instruction was given {len(args.instruction)} times. "
            f"Give one instruction, or chain the edits without --auto-cfg."
        )
    if not args.instruction[0].strip():
        raise IP2PError("--auto-cfg has nothing to choose scales for: the instruction is empty. Give the edit to make.")
    missing = [
        flag
        for flag, value in (
            ("--clip DIR", args.clip),
            ("--input-caption TEXT", args.input_caption),
            ("--edited-caption TEXT", args.edited_caption),
        )
        if not (value or "").strip()
    ]
    if missing:
        raise IP2PError(
            "--auto-cfg scores every edit of its sweep by CLIP directional similarity, which needs a CLIP model and "
            f"what the input shows and the edit should show: add {' and '.join(missing)}."
        )
    defaults = {"auto_text_cfg": auto_cfg.DEFAULT_TEXT_CFG_VALUES, "auto_image_cfg": auto_cfg.DEFAULT_IMAGE_CFG_VALUES}
    text, image = (
        parse_scales(getattr(args, name) or ",".join(f"{v:g}" for v in defaults[name]), f"--{name.replace('_', '-')}")
        for name in ("auto_text_cfg", "auto_image_cfg")
    )
    floor = args.min_image_similarity
    from ..clip_filter import check_clip_folder

    return AutoGuidance(
        cells=tuple((t, i) for t in text for i in image),
        min_image_similarity=auto_cfg.check_floor(auto_cfg.DEFAULT_MIN_IMAGE_SIMILARITY if floor is None else floor),
        clip=check_clip_folder(Path(args.clip).expanduser()),
        input_caption=args.input_caption.strip(),
        edited_caption=args.edited_caption.strip(),
    )


def auto_edit(model, clip, images, settings, auto: AutoGuidance, *, progress: bool):
    """``images`` edited at every setting of the sweep, each edit scored against its input with CLIP, and per image
    the edit the rule keeps: (the kept edits, one :class:`~ip2p.quality.auto_cfg.GuidanceChoice` per image)."""
    import torch
    from tqdm.auto import tqdm

    from ..headless.editor import edit
    from ..plot import TradeoffPoint
    from ..quality.auto_cfg import choose_guidance
    from ..quality.metrics import cosine, directional

    inputs = clip.embed_images(sizing.prepare(images, settings.resize, settings.max_side))  # as the model sees it
    caption_0, caption_1 = clip.embed_captions(auto.input_caption), clip.embed_captions(auto.edited_caption)
    edits, scores = [], []
    for text_cfg, image_cfg in tqdm(auto.cells, desc="auto-cfg sweep", unit="edit", disable=not progress, leave=False):
        cell = dataclasses.replace(settings, text_cfg=text_cfg, image_cfg=image_cfg)
        edited = edit(model, images, cell, progress=progress)
        embedded = clip.embed_images(edited)
        scores.append((directional(inputs, embedded, caption_0, caption_1).tolist(), cosine(inputs, embedded).tolist()))
        edits.append(edited)
    kept, choices = [], []
    for row in range(images.shape[0]):
        points = [
            TradeoffPoint(image_cfg=i, text_cfg=t, directional=dirs[row], image_similarity=sims[row])
            for (t, i), (dirs, sims) in zip(auto.cells, scores, strict=True)
        ]
        choice = choose_guidance(points, auto.min_image_similarity)
        kept.append(edits[next(k for k, point in enumerate(points) if point is choice.chosen)][row])
        choices.append(choice)
    return torch.stack(kept), choices


def collect_inputs(image: Path) -> tuple[list[Path], bool]:
    """The images to edit and whether the input is a folder.

    In a folder, hidden files and subfolders are passed over; files that are not regular (a FIFO
    would block the run), and files neither named nor recognised as images (notes, sidecars), are
    skipped with a warning. A file named as an image that Pillow cannot recognise (empty, text) is
    kept: :func:`sort_readable` then reports it as a failed input.
    """
    from ..images import is_image_file, is_regular_file

    if not image.exists():
        raise IP2PError(f"Input not found: {image}. Pass an image file or a folder of images.")
    if not image.is_dir():
        if not is_regular_file(image):
            raise IP2PError(
                f"--image {image} is not a regular file (a FIFO, socket or device). Pass an image file or a folder."
            )
        return [image], False
    found: list[Path] = []
    for path in sorted(image.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if not is_regular_file(path):
            logger.warning("Skipping %s: not a regular file (a FIFO, socket, device or broken link)", path)
        elif path.suffix.lower() in _FILE_SUFFIXES or is_image_file(path):
            found.append(path)
        else:
            logger.warning("Skipping %s: not an image", path)
    if not found:
        raise IP2PError(f"No images in the folder {image}. Put PNG/JPEG/WebP/TIFF files there, or pass one file.")
    return found, True


MAX_NAME_BYTES = 255  # the longest file name common filesystems accept
_FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")


def output_names(inputs: list[Path]) -> list[str]:
    """One PNG name per input, distinct even on case-insensitive filesystems.

    ``<stem>.png`` when no other input shares the stem (ignoring case), else ``<stem>_<ext>.png``
    (``a.png`` → ``a_png.png``, ``a.jpg`` → ``a_jpg.png``); a name still taken (say by an input
    called ``a_png.png``, which keeps ``a_png.png``) gets ``_2``, ``_3`` … before ``.png``.
    """
    stems = Counter(p.stem.casefold() for p in inputs)
    plain = [stems[p.stem.casefold()] == 1 for p in inputs]
    preferred = [
        p.stem if own or not p.suffix else f"{p.stem}_{p.suffix[1:]}" for p, own in zip(inputs, plain, strict=True)
    ]
    names = [""] * len(inputs)
    taken: set[str] = set()
    # Inputs with a stem of their own claim their names first; the renamed ones fit around them.
    for index in sorted(range(len(inputs)), key=lambda i: not plain[i]):
        name, count = f"{preferred[index]}.png", 1
        while name.casefold() in taken:
            count += 1
            name = f"{preferred[index]}_{count}.png"
        taken.add(name.casefold())
        names[index] = name
        if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise IP2PError(
                f"The output name for {inputs[index]} would be longer than {MAX_NAME_BYTES} bytes. "
                f"Rename the input shorter."
            )
    return names


def plan_outputs(inputs: list[Path], folder_input: bool, out: Path) -> list[Path]:
    """Where each edit goes: OUT itself (one image), or OUT/<name>.png (a folder) — never onto an input."""
    if folder_input:
        if out.exists() and not out.is_dir():
            raise IP2PError(f"--out {out} is a file, but the input is a folder. Pass a folder for --out.")
        if not out.exists() and out.suffix.lower() in _FILE_SUFFIXES:
            raise IP2PError(
                f"--out {out} names a file, but --image is a folder of images. Pass a folder for --out "
                f"(e.g. {out.with_suffix('')})."
            )
        if out.exists() and out.resolve() == inputs[0].parent.resolve():
            raise IP2PError(f"--out {out} is the input folder. Pass another folder so no input can be replaced.")
        targets = [out / name for name in output_names(inputs)]
    else:
        if out.is_dir():
            raise IP2PError(
                f"--out {out} is an existing folder, but one image is written to a file. "
                f"Give the .png path to write (e.g. {out / (inputs[0].stem + '.png')})."
            )
        if out.suffix.lower() != ".png":
            raise IP2PError(
                f"--out {out} must end in .png: edits are written as PNG with their settings. Give a .png path."
            )
        targets = [out]
    resolved_inputs = {p.resolve() for p in inputs}
    for target in targets:
        if target.resolve() in resolved_inputs or (target.exists() and any(_same(target, p) for p in inputs)):
            raise IP2PError(f"--out would overwrite the input {target}. Choose another output path.")
    return targets


def refuse_existing(targets: list[Path], out: Path, overwrite: bool) -> None:
    """Without ``--overwrite``, an output that exists already is refused before anything runs (nothing is lost)."""
    existing = [target for target in targets if target.exists() or target.is_symlink()]
    if not existing or overwrite:
        return
    if len(targets) == 1:
        raise IP2PError(f"--out {out} already exists. Choose another path, or pass --overwrite to replace it.")
    names = ", ".join(target.name for target in existing[:3]) + (", …" if len(existing) > 3 else "")
    raise IP2PError(
        f"--out {out}: {len(existing)} of the {len(targets)} outputs already exist ({names}). Choose another "
        f"folder, or pass --overwrite to replace them."
    )


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_writable(targets: list[Path], out: Path) -> None:
    """Find an output that cannot be written before the model runs; the message names the output path.

    One target per folder is probed by :func:`ip2p.formats.atomic.require_writable` (nothing is left behind).
    """
    for target in targets:
        if target.exists() and not target.is_file():
            what = "a folder" if target.is_dir() else "not a regular file"
            raise IP2PError(f"--out {out}: {target} exists and is {what}. Move it away or choose another --out.")
    for target in {target.parent: target for target in targets}.values():
        require_writable(target)


def sort_readable(inputs: list[Path], max_input_side: int) -> tuple[list[int], dict[int, str]]:
    """Decode every input once before the model loads: (indices of the readable ones, {index: why not} of the rest).

    One image alone that cannot be read is refused at once; in a folder the others are still edited
    and the unreadable ones reported at the end (:func:`report_failures`).
    """
    from ..images import load_image

    readable, failed = [], {}
    for index, path in enumerate(inputs):
        try:
            load_image(path, max_input_side=max_input_side)
        except IP2PError as exc:
            failed[index] = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        else:
            readable.append(index)
    if len(inputs) == 1 and failed:
        raise IP2PError(failed[0])
    if not readable:
        raise IP2PError(f"None of the {len(inputs)} images could be read; nothing was written. The first: {failed[0]}")
    for reason in failed.values():
        logger.warning("Not edited: %s", reason)
    return readable, failed


def report_failures(inputs: list[Path], failed: dict[int, str], written: int) -> None:
    """After a folder run: a non-zero exit naming every input that could not be edited (the edits written stay)."""
    if not failed:
        return
    names = ", ".join(inputs[index].name for index in sorted(failed))
    raise IP2PError(
        f"{len(failed)} of the {len(inputs)} images could not be edited ({names}; each reason is in the warnings "
        f"above); the {written} other edit(s) were written. Fix those files and rerun with --overwrite, or edit "
        f"them one by one."
    )


def group_by_size(inputs: list[Path], batch: int, indices: list[int] | None = None) -> list[list[int]]:
    """Indices of inputs (all, or ``indices``) grouped by (width, height), in chunks of at most ``batch``, input
    order kept."""
    from ..images import image_size

    groups: dict[tuple[int, int], list[int]] = {}
    for index in range(len(inputs)) if indices is None else indices:
        groups.setdefault(image_size(inputs[index]), []).append(index)
    chunks = [members[i : i + batch] for members in groups.values() for i in range(0, len(members), batch)]
    return sorted(chunks, key=lambda chunk: chunk[0])


def working_settings(settings, model, size: tuple[int, int]):
    """``settings`` for an input of ``size`` with the working long side decided: ``--max-side`` when given, else
    the input's own long side up to the model's size (:func:`ip2p.headless.editor.default_side`)."""
    resolved = settings.for_image(model, *size)
    if settings.max_side is None and settings.resize == "paper" and not settings.is_empty:
        logger.info(
            "Working long side %d px: the input's, at most the model's own size (pass --max-side to choose another)",
            resolved.max_side,
        )
    return resolved


def edit_metadata(settings, model, source: Path, batch_size: int, batch_index: int) -> dict:
    """What a PNG records: the settings that applied, with dtype and device, and which model made it.

    Enough to reproduce the edit from the PNG alone. An empty instruction applies nothing (the
    input comes back as it was), so only the instruction is recorded then; ``max_side`` (the long side
    used: ``--max-side``, or the model's own size) only under ``--resize paper``.
    """
    metadata: dict = {"instruction": settings.instruction}
    if not settings.is_empty:
        metadata.update(
            negative=settings.negative,
            seed=settings.seed,
            steps=settings.steps,
            text_cfg=settings.text_cfg,
            image_cfg=settings.image_cfg,
            sampler=settings.sampler,
            scheduler=settings.scheduler,
            resize=settings.resize,
        )
        if settings.resize == "paper":
            metadata["max_side"] = settings.max_side
        metadata.update(dtype=str(model.unet.dtype).removeprefix("torch."), device=str(model.unet.device))
    metadata.update(
        model_hash=model.model_hash,
        model=Path(model.source).name if model.source else "",
        source_image=source.name,
        batch_size=batch_size,
        batch_index=batch_index,
        ip2p_version=__version__,
    )
    return metadata


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    auto = auto_guidance(args)
    if not 1 <= args.batch <= MAX_BATCH:
        raise IP2PError(f"--batch is {args.batch}; give a whole number from 1 to {MAX_BATCH}.")
    device = devices.resolve_device(args.device)
    dtype = devices.resolve_dtype(args.dtype, device)
    out = Path(args.out)
    inputs, folder_input = collect_inputs(Path(args.image))
    targets = plan_outputs(inputs, folder_input, out)
    refuse_existing(targets, out, args.overwrite)
    check_writable(targets, out)
    readable, failed = sort_readable(inputs, settings.max_input_side)
    chunks = group_by_size(inputs, args.batch, readable)

    import torch

    from ..headless.editor import NonFiniteEditError, edit
    from ..headless.loading import load_edit_model
    from ..headless.lora import apply_loras
    from ..images import load_image, save_png

    if settings.is_empty:
        logger.warning("The instruction is empty: the images are written unchanged.")
    model = load_edit_model(args.model, require_edit=True, device=str(device), dtype=dtype)
    applied_loras = apply_loras(model, lora.adapters(args))
    if auto is not None:
        from ..clip_filter import ClipScorer
        from ..formats.hashing import model_hash

        clip = ClipScorer.from_folder(auto.clip, device=device, dtype=dtype)
        clip_hash = model_hash(auto.clip)
    # Output folders are made by the first write into them (save_png), so a failed first edit leaves none.

    bar = _image_bar(len(readable), show=len(readable) > 1 and not args.quiet)
    written = 0
    try:
        for chunk in chunks:
            batch = torch.cat([load_image(inputs[i], max_input_side=settings.max_input_side) for i in chunk])
            chunk_settings = working_settings(settings, model, (batch.shape[-1], batch.shape[-2]))
            choices = None
            try:
                if auto is not None:
                    edited, choices = auto_edit(model, clip, batch, chunk_settings, auto, progress=not args.quiet)
                else:
                    edited = batch
                    for turn in args.instruction:  # several: each edits the result of the one before
                        turn_settings = dataclasses.replace(chunk_settings, instruction=turn)
                        edited = edit(model, edited, turn_settings, progress=not args.quiet)
            except IP2PError as exc:
                rows = exc.rows if isinstance(exc, NonFiniteEditError) else range(len(chunk))
                names = ", ".join(str(inputs[chunk[row]]) for row in rows)
                kept = f"the {written} edit(s) finished before it are kept" if written else "nothing was written"
                raise IP2PError(f"{names}: {exc} The run stopped there; {kept}.") from exc
            for row, index in enumerate(chunk):
                row_settings = chunk_settings
                if choices is not None:
                    chosen = choices[row].chosen
                    row_settings = dataclasses.replace(
                        chunk_settings, text_cfg=chosen.text_cfg, image_cfg=chosen.image_cfg
                    )
                    logger.info("%s, automatic guidance:\n%s", inputs[index], choices[row].table())
                metadata = edit_metadata(row_settings, model, inputs[index], len(chunk), row)
                if choices is not None:
                    metadata["auto_cfg"] = {**choices[row].record(), "clip_hash": clip_hash}
                if len(args.instruction) > 1:
                    metadata["instructions"] = list(args.instruction)  # the turns, in order
                if applied_loras:
                    metadata["loras"] = applied_loras
                save_png(edited[row], targets[index], metadata)
                written += 1
                logger.info("Wrote %s", targets[index])
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    report_failures(inputs, failed, written)
    return 0


def _image_bar(total: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="images", unit="img")

"""The ``ip2p`` command line: ``ip2p edit`` (one image or a folder) and ``ip2p convert``.

Each subcommand is one ``_add_<name>`` function that declares its arguments and the handler that
runs it, so later commands (train, dataset, demo) slot in beside these. User errors
(:class:`IP2PError`, missing files, bad arguments) print one line to stderr and exit 2, with no
traceback and no output file; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os

# Never reach for a hub: set before anything imports huggingface_hub (diffusers, transformers).
os.environ["HF_HUB_OFFLINE"] = "1"

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from . import __version__, guidance, schedulers, sizing  # noqa: E402
from .errors import IP2PError  # noqa: E402

logger = logging.getLogger("ip2p")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DTYPES = ("auto", "float32", "float16", "bfloat16")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other user error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _print_error(f"{self.prog}: {message} (see `{self.prog} --help`)")
        raise SystemExit(EXIT_USER_ERROR)


def _print_error(message: str) -> None:
    sys.stderr.write("error: " + " ".join(str(message).split()) + "\n")


# --------------------------------------------------------------------------------------------
# ip2p edit


def _add_edit(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "edit",
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
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: float16 on GPU, float32 on CPU")
    p.set_defaults(handler=run_edit)


def _settings(args: argparse.Namespace):
    from .editor import EditSettings

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


def resolve_device(name: str):
    """A torch device from ``--device``, refusing one this torch cannot use."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise IP2PError(f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise IP2PError(f"--device {name}: CUDA is not available to this torch build. Use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise IP2PError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s). Pick another index.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise IP2PError(f"--device {name}: MPS is not available here. Use --device cpu.")
    return device


def resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return getattr(torch, name)


def collect_inputs(image: Path) -> tuple[list[Path], bool]:
    """The images to edit and whether the input is a folder; non-image files are skipped with a warning."""
    from .images import is_image_file

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
    from .images import load_image

    for path in inputs:
        try:
            load_image(path, max_input_side=max_input_side)
        except IP2PError as exc:
            if str(path) in str(exc):
                raise
            raise IP2PError(f"{path}: {exc}") from exc


def group_by_size(inputs: list[Path], batch: int) -> list[list[int]]:
    """Indices of inputs grouped by (width, height), in chunks of at most ``batch``, input order kept."""
    from .images import image_size

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


def run_edit(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.batch < 1:
        raise IP2PError(f"--batch is {args.batch}; give a whole number ≥ 1.")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    inputs, folder_input = collect_inputs(Path(args.image))
    targets = plan_outputs(inputs, folder_input, Path(args.out))
    preflight(inputs, settings.max_input_side)
    chunks = group_by_size(inputs, args.batch)

    import torch

    from .editor import edit
    from .images import load_image, save_png
    from .loading import load_edit_model

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


# --------------------------------------------------------------------------------------------
# ip2p convert


def _add_convert(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "convert",
        help="rewrite a pickled .ckpt as .safetensors (weights only, no code runs)",
        description="Convert a .ckpt checkpoint to .safetensors. The pickle is read without running code.",
    )
    p.add_argument("--ckpt", required=True, help="the .ckpt/.pt/.pth file")
    p.add_argument("--out", default=None, help="the .safetensors to write (default: beside the input)")
    p.set_defaults(handler=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from .checkpoint import convert_ckpt_to_safetensors

    written = convert_ckpt_to_safetensors(args.ckpt, args.out)
    logger.info("Wrote %s", written)
    return 0


# --------------------------------------------------------------------------------------------
# ip2p demo


def _add_demo(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo",
        help="run `ip2p edit` on the embedded default model (random weights: plumbing only)",
        description="Build the embedded default model and edit a rendered image with it. The default model has "
        "random weights until the trainer's toy model ships: the output proves the pipeline, not edit quality.",
    )
    p.add_argument("--out", default="out/demo", help="folder for the model, input.png and edited.png")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from . import demo

    out_dir = Path(args.out)
    model_dir, input_path = demo.prepare(out_dir)
    edited = out_dir / "edited.png"
    edit_args = build_parser().parse_args(demo.edit_arguments(model_dir, input_path, edited, args.steps, args.seed))
    status = edit_args.handler(edit_args)
    if status == 0:
        logger.info(
            "Demo done: %s -> %s. The embedded model has RANDOM weights (built from configs), so the edit is "
            "noise: this run checks the plumbing, not the quality.",
            input_path,
            edited,
        )
    return status


# --------------------------------------------------------------------------------------------

# Subcommands in help order; each adds its parser and sets ``handler``.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_edit, _add_convert, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ip2p", description="InstructPix2Pix: edit images by written instructions.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(commands)
    return parser


class _TerminalLogging:
    """Messages of the ``ip2p`` loggers on stderr for one run, then the logging setup as it was."""

    def __init__(self, quiet: bool) -> None:
        self.level = logging.WARNING if quiet else logging.INFO
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        self.handler.setLevel(self.level)
        self.logger = logging.getLogger("ip2p")

    def __enter__(self) -> None:
        self.saved_level = self.logger.level
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > self.level:
            self.logger.setLevel(self.level)

    def __exit__(self, *exc_info: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.saved_level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    try:
        with _TerminalLogging(args.quiet):
            return args.handler(args)
    except IP2PError as exc:
        _print_error(str(exc))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        _print_error(f"{exc.strerror or exc}: {exc.filename}. Check the path.")
    except KeyboardInterrupt:
        _print_error("interrupted; no partial output was written.")
        return EXIT_INTERRUPTED
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())

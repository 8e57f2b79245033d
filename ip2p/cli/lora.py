"""``ip2p lora merge``: a LoRA adapter merged into its base, written as a full model; and the ``--lora`` options.

``--lora FILE`` may be repeated; each ``--lora-strength X`` applies to the ``--lora`` just before
it (default 1.0), so ``--lora a.safetensors --lora-strength 0.5 --lora b.safetensors`` merges a at
0.5 and b at 1.0, in that order.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import IP2PError

logger = logging.getLogger(__name__)

DEFAULT_STRENGTH = 1.0


class _AddLoRA(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        loras = list(getattr(namespace, self.dest, None) or [])
        loras.append([values, DEFAULT_STRENGTH, False])
        setattr(namespace, self.dest, loras)


class _SetStrength(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        loras = getattr(namespace, "loras", None)
        if not loras:
            parser.error("--lora-strength must follow the --lora it applies to")
        if loras[-1][2]:
            parser.error(f"--lora {loras[-1][0]} has two --lora-strength values; give one per --lora")
        loras[-1][1:] = [values, True]


def add_lora_options(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """``--lora FILE`` (repeatable) and ``--lora-strength X`` (for the ``--lora`` before it)."""
    parser.add_argument(
        "--lora",
        dest="loras",
        action=_AddLoRA,
        default=[],
        required=required,
        metavar="FILE",
        help="a LoRA adapter (.safetensors, ComfyUI/kohya keys) merged into the model before use; repeatable",
    )
    parser.add_argument(
        "--lora-strength",
        type=float,
        action=_SetStrength,
        metavar="X",
        help=f"strength of the --lora just before it (default {DEFAULT_STRENGTH}; 0 turns it off)",
    )


def adapters(args: argparse.Namespace) -> list[tuple[str, float]]:
    """The ``(file, strength)`` pairs given on the command line, in order."""
    return [(path, strength) for path, strength, _ in getattr(args, "loras", None) or []]


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "lora",
        parents=[common],
        help="LoRA adapters: merge one into its base model",
        description="Work with LoRA adapters written by `ip2p train` with lora.rank set.",
    )
    actions = p.add_subparsers(dest="lora_command", metavar="ACTION", required=True, parser_class=type(p))
    merge = actions.add_parser(
        "merge",
        parents=[common],
        help="merge adapters into a base model and write the full model",
        description="Merge LoRA adapters into an InstructPix2Pix base and save the result as a single .safetensors "
        "file (ComfyUI's checkpoint loader reads it) or, for any other --out, a diffusers folder.",
    )
    merge.add_argument("--model", required=True, help="the base: single-file checkpoint or diffusers folder")
    add_lora_options(merge, required=True)
    merge.add_argument("--out", required=True, help="a .safetensors file, or a folder for a diffusers model")
    merge.add_argument("--fp16", action="store_true", help="write the single file in float16 (half the size)")
    merge.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    merge.set_defaults(handler=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise IP2PError(f"--out {out} already exists. Choose another path, or pass --overwrite to replace it.")
    if out.resolve() == Path(args.model).resolve():
        raise IP2PError(f"--out {out} is the base model itself. Write the merged model to another path.")

    import torch

    from ..headless.export import save_diffusers, save_single_file
    from ..headless.loading import load_edit_model
    from ..headless.lora import apply_loras

    model = load_edit_model(args.model, require_edit=True)
    apply_loras(model, adapters(args))
    if out.suffix.lower() == ".safetensors":
        save_single_file(model, out, dtype=torch.float16 if args.fp16 else None)
    else:
        save_diffusers(model, out)
    logger.info("Wrote %s", out)
    return 0

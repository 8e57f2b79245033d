"""``ip2p convert``: a pickled checkpoint rewritten as ``.safetensors``, without running code in it."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "convert",
        parents=[common],
        help="rewrite a pickled .ckpt as .safetensors (weights only, no code runs)",
        description="Convert a pickled checkpoint (.ckpt/.pt/.pth) to .safetensors. The pickle is read without "
        "running code in it; only its tensors are kept.",
    )
    p.add_argument("--ckpt", required=True, help="the pickled checkpoint: a .ckpt, .pt or .pth file")
    p.add_argument("--out", default=None, help="the .safetensors to write (default: beside the input, same name)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..formats.checkpoint import convert_ckpt_to_safetensors

    written = convert_ckpt_to_safetensors(args.ckpt, args.out, overwrite=args.overwrite)
    logger.info("Wrote %s", written)
    return 0

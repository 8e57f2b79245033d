"""``ip2p dataset``: build and inspect instruction-editing datasets.

Subcommands: ``toy`` (the synthetic toy world in the paper's layout). Each subcommand is one
``_add_<name>(subcommands, common)`` below that declares its arguments and handler, listed in
:data:`SUBCOMMANDS`; ``convert`` and ``stats`` slot in the same way.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..errors import IP2PError

logger = logging.getLogger(__name__)


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "dataset",
        parents=[common],
        help="build instruction-editing datasets (toy world)",
        description="Build and inspect instruction-editing datasets.",
    )
    subcommands = p.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND", required=True)
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subcommands, common)


def _add_toy(subcommands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..datasets.toy import DEFAULT_SIZE, FAMILIES, SEEDS_PER_RUN

    p = subcommands.add_parser(
        "toy",
        parents=[common],
        help="render the synthetic toy world (shapes, colours, instructions) in the paper's layout",
        description="Render toy instruction-editing pairs: 1-3 coloured shapes on a plain background, an "
        "instruction (recolour, background, reshape, remove, add) and the true edited image with its edit mask, "
        "written in the paper's folder layout (PNG). Runs with different --seed values never share an example "
        f"(example seeds are SEED*{SEEDS_PER_RUN} + i).",
    )
    p.add_argument("--out", required=True, help="the dataset folder to create (must be missing or empty)")
    p.add_argument("--count", type=int, required=True, help="how many pairs to write")
    p.add_argument("--seed", type=int, default=0, help="run seed; different values give disjoint examples (default: 0)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"image side in pixels (default: {DEFAULT_SIZE})")
    p.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help=f"comma-separated edit families to draw from (default: {','.join(FAMILIES)})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    p.set_defaults(handler=run_toy)


SUBCOMMANDS = (_add_toy,)


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise IP2PError(f"--out {out} is a file; the toy dataset needs a folder. Choose another --out.")
    if not overwrite and any(out.iterdir()):
        raise IP2PError(
            f"--out {out} already exists and is not empty. Pass --overwrite to replace it, or choose another --out."
        )


def _bar(total: int, show: bool):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the headless extra
        return None
    return tqdm(total=total, desc="toy pairs", unit="pair")


def run_toy(args: argparse.Namespace) -> int:
    from ..datasets.toy import check_families, check_size, toy_seeds, write_toy_dataset
    from ..formats.atomic import atomic_dir

    out = Path(args.out)
    families = check_families(f.strip() for f in args.families.split(",") if f.strip())
    check_size(args.size)
    toy_seeds(args.seed, args.count)  # checks --seed and --count before anything is written
    _check_out(out, args.overwrite)

    start = time.perf_counter()
    bar = _bar(args.count, not args.quiet)
    try:
        with atomic_dir(out) as tmp:  # all or nothing: an interrupted run leaves no partial dataset
            entries = write_toy_dataset(
                tmp, args.count, args.seed, args.size, families, progress=bar.update if bar is not None else None
            )
    finally:
        if bar is not None:
            bar.close()
    pairs = sum(len(seeds) for _, seeds in entries)
    logger.info("Wrote %d toy pairs (%d px) to %s in %.1f s", pairs, args.size, out, time.perf_counter() - start)
    return 0

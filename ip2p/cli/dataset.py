"""``ip2p dataset``: build and inspect instruction-editing datasets.

Subcommands: ``toy`` (the synthetic toy world in the paper's layout), ``convert`` (between the
paper's layout and Hugging Face parquet), ``stats`` (what a dataset holds). Each subcommand is one
``_add_<name>(subcommands, common)`` below that declares its arguments and handler, listed in
:data:`SUBCOMMANDS`; the work itself is in :mod:`ip2p.datasets`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ..errors import IP2PError

logger = logging.getLogger(__name__)


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "dataset",
        parents=[common],
        help="build, convert and inspect instruction-editing datasets",
        description="Build and inspect instruction-editing datasets.",
    )
    subcommands = p.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND", required=True)
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subcommands, common)


def _add_toy(subcommands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..datasets.toy import DEFAULT_FAMILIES, DEFAULT_SIZE, FAMILIES, SEEDS_PER_RUN

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
        default=",".join(DEFAULT_FAMILIES),
        help=f"comma-separated edit families to draw from, of {','.join(FAMILIES)} (default: "
        f"{','.join(DEFAULT_FAMILIES)}; 'add' does not say where, so its true edit is one of many)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    p.set_defaults(handler=run_toy)


def _add_convert(subcommands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..datasets.outputs import LAYOUTS

    p = subcommands.add_parser(
        "convert",
        parents=[common],
        help="convert a dataset to the paper's layout or to Hugging Face parquet",
        description="Read SRC in any layout the trainer reads (the paper's folders, parquet, a `datasets` "
        "save_to_disk folder) and write it to DST in the paper's layout or as parquet shards "
        "(DST/data/train/NNNNN.parquet: input_image, edit_prompt, edited_image, input_caption, output_caption, "
        "seed, the paper's metrics, metadata_json, example_key). Resumable: run it again into the same DST to "
        "finish an interrupted conversion. To the paper's layout from a source without captions, prompt.json "
        "gets empty captions; without a seed column, the seed is the row's index in SRC; prompts get folders "
        "in order of first appearance.",
    )
    p.add_argument("src", metavar="SRC", help="the dataset to read")
    p.add_argument("dst", metavar="DST", help="the folder to write (missing, empty, or an unfinished conversion)")
    p.add_argument("--to", required=True, choices=LAYOUTS, help="the layout to write")
    p.add_argument(
        "--image-format",
        choices=("png", "jpg"),
        default="png",
        help="how images are stored: png (lossless, default) or jpg (quality 95, as the paper's data)",
    )
    p.add_argument("--split", default=None, help="the split of SRC to read (parquet/arrow; default: train)")
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help="SRC's column for a role (input_image, edit_prompt, edited_image), e.g. --column edit_prompt=instruction",
    )
    p.add_argument("--shard-rows", type=int, default=1000, help="rows per parquet shard (default: 1000)")
    p.set_defaults(handler=run_convert)


def _add_stats(subcommands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subcommands.add_parser(
        "stats",
        parents=[common],
        help="count pairs, prompts, bad rows, image sizes and metadata ranges of a dataset",
        description="Read every pair of DIR (or the first --limit) and report pairs, distinct prompts, rows "
        "skipped by reason, image sizes and the range and mean of each numeric metadata value (CLIP scores, "
        "cfg_scale, p2p_threshold ...). Image headers are checked at open time in every layout.",
    )
    p.add_argument("dir", metavar="DIR", help="the dataset to inspect")
    p.add_argument("--split", default=None, help="the split to read (parquet/arrow; default: train)")
    p.add_argument("--column", action="append", default=[], metavar="ROLE=NAME", help="as for convert")
    p.add_argument("--limit", type=int, default=None, help="examine only the first N pairs (default: all)")
    p.add_argument("--json", action="store_true", help="write the figures as one JSON object")
    p.set_defaults(handler=run_stats)


SUBCOMMANDS = (_add_toy, _add_convert, _add_stats)


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise IP2PError(f"--out {out} is a file; the toy dataset needs a folder. Choose another --out.")
    if not overwrite and any(out.iterdir()):
        raise IP2PError(
            f"--out {out} already exists and is not empty. Pass --overwrite to replace it, or choose another --out."
        )


def _bar(total: int, show: bool, desc: str = "toy pairs"):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the headless extra
        return None
    return tqdm(total=total, desc=desc, unit="pair")


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


def _columns(given: list[str]) -> dict[str, str]:
    columns = {}
    for item in given:
        role, sep, name = item.partition("=")
        if not sep or not role or not name:
            raise IP2PError(f"--column {item!r} is not ROLE=NAME; e.g. --column edit_prompt=instruction.")
        columns[role.strip()] = name.strip()
    return columns


def run_convert(args: argparse.Namespace) -> int:
    from ..datasets.convert import check_destination, convert_dataset
    from ..datasets.reader import open_dataset

    if args.shard_rows < 1:
        raise IP2PError(f"--shard-rows must be 1 or more (got {args.shard_rows}).")
    source = open_dataset(args.src, columns=_columns(args.column), split=args.split)
    check_destination(Path(args.dst), args.to, Path(args.src))
    start = time.perf_counter()
    bar = _bar(len(source), not args.quiet, "converting")
    try:
        report = convert_dataset(
            source,
            args.dst,
            args.to,
            image_format=args.image_format,
            shard_rows=args.shard_rows,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    skipped = {**source.skipped}
    for reason, count in report.bad.items():
        skipped[reason] = skipped.get(reason, 0) + count
    logger.info(
        "Wrote %d pairs to %s (%s) in %.1f s; %d already there; skipped %s",
        report.written,
        args.dst,
        args.to,
        time.perf_counter() - start,
        report.already,
        ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items())) or "none",
    )
    if report.filled_captions or report.seeds_from_index:
        logger.info(
            "Filled in: empty captions for %d pairs, seeds from the row index for %d pairs",
            report.filled_captions,
            report.seeds_from_index,
        )
    if report.dropped:
        logger.info("Left out: %s", ", ".join(f"{name} ({n})" for name, n in sorted(report.dropped.items())))
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from ..datasets.reader import open_dataset
    from ..datasets.stats import dataset_stats

    if args.limit is not None and args.limit < 1:
        raise IP2PError(f"--limit must be 1 or more (got {args.limit}).")
    dataset = open_dataset(args.dir, columns=_columns(args.column), split=args.split, verify_images=True)
    total = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    bar = _bar(total, not args.quiet and not args.json, "reading")
    try:
        stats = dataset_stats(dataset, limit=args.limit, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    sys.stdout.write(json.dumps(stats, indent=1) + "\n" if args.json else format_stats(stats))
    return 0


def format_stats(stats: dict) -> str:
    """The figures of :func:`~ip2p.datasets.stats.dataset_stats` as a few aligned lines."""
    examined = "" if stats["examined"] == stats["rows"] else f", first {stats['examined']} examined"
    lines = [
        f"{stats['path']} ({stats['layout']} layout)",
        f"pairs:        {stats['pairs']} of {stats['rows']} usable rows{examined}",
        f"prompts:      {stats['prompts']} ({stats['with_captions']} pairs with both captions)",
        "skipped:      " + (", ".join(f"{r}: {n}" for r, n in stats["skipped"].items()) or "none"),
    ]
    if stats["image_sizes"]:
        common = ", ".join(f"{size} ({n})" for size, n in list(stats["image_sizes"].items())[:5])
        more = f", {len(stats['image_sizes']) - 5} more" if len(stats["image_sizes"]) > 5 else ""
        lines.append(f"image sizes:  {common}{more}")
        lines.append(f"width:        {stats['width'][0]}..{stats['width'][1]}")
        lines.append(f"height:       {stats['height'][0]}..{stats['height'][1]}")
    if stats["metadata"]:
        width = max(len("metadata"), *(len(name) for name in stats["metadata"]))
        lines.append(f"{'metadata':<{width}}  {'count':>6}  {'mean':>9}  {'min':>9}  {'max':>9}")
        for name, m in stats["metadata"].items():
            lines.append(f"{name:<{width}}  {m['count']:>6}  {m['mean']:>9.4g}  {m['min']:>9.4g}  {m['max']:>9.4g}")
    return "\n".join(lines) + "\n"

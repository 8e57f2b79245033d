"""``ip2p generate``: the paper's data engine at scale — prompt triples to a filtered dataset.

Written in the paper's layout or as Hugging Face parquet (``--format``). Sharded over the processes
of ``accelerate launch`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``: one process per GPU or node),
resumable (done prompts are skipped, others redone whole). Settings are checked before any model loads,
and a rerun into a dataset made with other settings is refused unless ``--force``.
"""

from __future__ import annotations

import argparse
import logging

from .. import devices
from ..errors import IP2PError

logger = logging.getLogger(__name__)


def _range(text: str) -> tuple[float, float]:
    """``"0.1,0.9"`` -> (0.1, 0.9), a uniform range; ``"7.5"`` -> (7.5, 7.5), fixed."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a pair of numbers such as 0.1,0.9") from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"{text!r}: give one number (fixed) or two (a uniform range), not {len(values)}")


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..datasets.outputs import LAYOUTS
    from ..headless.generate import SETTINGS_FILE

    p = commands.add_parser(
        "generate",
        parents=[common],
        help="generate an instruction-editing dataset with Prompt-to-Prompt and a CLIP filter",
        description=(
            "For each (input caption, instruction, edited caption) triple, sample image pairs with a base Stable "
            "Diffusion model and Prompt-to-Prompt, score them with CLIP and keep the best, in the paper's layout or "
            "as Hugging Face parquet shards. Several processes: `accelerate launch --multi_gpu --num_processes N -m "
            "ip2p generate ...` (each takes every N-th prompt). Rerun the same command to resume."
        ),
    )
    p.add_argument(
        "--prompts",
        required=True,
        help="prompt triples: .jsonl (caption|input, edit, output), .csv, or a template file",
    )
    p.add_argument(
        "--base", required=True, help="a base (4-channel) Stable Diffusion model: single file or diffusers folder"
    )
    p.add_argument("--out", required=True, help="the dataset folder; an existing one is resumed")
    p.add_argument(
        "--format",
        choices=LAYOUTS,
        default="paper",
        help="paper: prompt folders of JPEG pairs (default); parquet: OUT/data/train/NNNNN.parquet shards",
    )
    p.add_argument(
        "--shard-rows",
        type=int,
        default=1000,
        help="parquet: rows per shard (default 1000); fewer lose less work to a kill -9, more make fewer files",
    )
    p.add_argument("--samples", type=int, default=100, help="pairs sampled per prompt (default 100, as the paper)")
    p.add_argument("--keep", type=int, default=4, help="pairs kept per prompt, best CLIP directional similarity (4)")
    p.add_argument("--steps", type=int, default=100, help="sampling steps (default 100)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument(
        "--clip", default=None, help="a local CLIP model folder (transformers format); without it nothing is filtered"
    )
    p.add_argument(
        "--p2p-fraction", type=_range, default=(0.1, 0.9), help="p: one number, or a uniform range (0.1,0.9)"
    )
    p.add_argument(
        "--cfg", type=_range, default=(7.5, 15.0), help="guidance scale: one number, or a uniform range (7.5,15)"
    )
    p.add_argument(
        "--min-sim", type=_range, default=(0.2, 0.2), help="minimum CLIP image-caption similarity, both images (0.2)"
    )
    p.add_argument("--min-sim-dir", type=float, default=0.2, help="minimum CLIP directional similarity (0.2)")
    p.add_argument("--min-sim-image", type=float, default=0.75, help="minimum CLIP image-image similarity (0.75)")
    p.add_argument("--sampler", default="euler_a", help="a sampler whose scheduler takes a generator (default euler_a)")
    p.add_argument(
        "--batch", type=int, default=4, help="seeds per UNet call (default 4); the pairs do not depend on it"
    )
    p.add_argument("--seed", type=int, default=0, help="run seed: the same seed gives the same pairs (default 0)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available), cpu, cuda:1 …")
    p.add_argument("--dtype", default="auto", choices=devices.DTYPES, help="auto: float16 on GPU, float32 on CPU")
    p.add_argument(
        "--force",
        action="store_true",
        help=f"go on in a dataset made with other settings (without it such a rerun is refused; OUT/{SETTINGS_FILE} "
        f"records them)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..clip_filter import FilterThresholds
    from ..formats.hashing import model_hash
    from ..headless.generate import (
        GenerateSettings,
        check_keep,
        check_settings,
        generate_dataset,
        settings_record,
        write_settings,
    )
    from ..prompts import read_prompts

    thresholds = FilterThresholds(
        sim_0=args.min_sim[0],
        sim_1=args.min_sim[1],
        sim_dir=args.min_sim_dir,
        sim_image=args.min_sim_image,
        keep=args.keep,
    )
    settings = GenerateSettings(
        samples=args.samples,
        keep=args.keep,
        steps=args.steps,
        size=args.size,
        p2p_fraction=args.p2p_fraction,
        cfg=args.cfg,
        sampler=args.sampler,
        batch=args.batch,
        seed=args.seed,
        thresholds=thresholds,
    )
    check_keep(settings, filtered=args.clip is not None)  # before any model loads
    if args.shard_rows < 1:
        raise IP2PError(f"--shard-rows must be 1 or more, got {args.shard_rows}.")
    rank, world, local_rank = devices.launched_process()
    prompts = read_prompts(args.prompts)
    if args.clip is not None:
        from ..clip_filter import check_clip_folder

        check_clip_folder(args.clip)

    device = devices.process_device(args.device, world, local_rank)
    dtype = devices.resolve_dtype(args.dtype, device)
    clip_hash = model_hash(args.clip) if args.clip is not None else None
    record = settings_record(settings, model_hash(args.base), clip_hash, str(dtype).removeprefix("torch."))
    earlier = check_settings(args.out, record, force=args.force)  # a rerun continues the dataset only as it was made
    from ..headless.loading import load_edit_model
    from ..headless.p2p import check_base_model

    model = load_edit_model(args.base, require_edit=False, device=device, dtype=dtype)
    check_base_model(model)
    scorer = None
    if args.clip is not None:
        from ..clip_filter import ClipScorer

        scorer = ClipScorer.from_folder(args.clip, device=device, dtype=dtype)
    write_settings(args.out, record, earlier)

    from tqdm.auto import tqdm

    share = len(range(rank, len(prompts), world))
    with tqdm(
        total=share,
        desc=f"ip2p generate [{rank}/{world}]" if world > 1 else "ip2p generate",
        unit="prompt",
        disable=args.quiet,
    ) as bar:
        summary = generate_dataset(
            model,
            prompts.triples,
            args.out,
            settings,
            scorer,
            layout=args.format,
            shard_rows=args.shard_rows,
            rank=rank,
            world=world,
            progress=bar.update,
        )
    logger.info("%s%s: %s", args.out, f" (process {rank} of {world})" if world > 1 else "", summary.line())
    return 0

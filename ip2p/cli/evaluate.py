"""``ip2p eval``: how well a model edits a dataset, or how good a dataset's own pairs are, in numbers.

The paper's CLIP similarities (directional against image similarity over an image_cfg sweep) and
MagicBrush's target metrics (L1, L2, CLIP-I, DINO, CLIP-T), per turn and at the final turn for
multi-turn data (MagicBrush's parquet); docs/metrics.md says what each means.
Settings, folders and the dataset are checked before any model loads; a rerun continues.
Sharded over the processes of ``accelerate launch`` as ``ip2p generate`` is (``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK``); the last process to finish writes ``metrics.json`` and reports it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .. import devices
from ..errors import IP2PError

logger = logging.getLogger(__name__)


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..headless.evaluate import DEFAULT_IMAGE_CFG

    p = commands.add_parser(
        "eval",
        parents=[common],
        help="score a model's edits of a dataset (or the dataset's own pairs) with CLIP, DINO and pixel metrics",
        description="Edit every example of a dataset at each (text_cfg, image_cfg) pair and score each edit: the "
        "paper's CLIP similarities and MagicBrush's L1, L2, CLIP-I, DINO and CLIP-T against the dataset's edited "
        "image. Without --model the dataset's own pairs are scored. Rerun the same command to resume. Several "
        "processes: `accelerate launch --multi_gpu --num_processes N -m ip2p eval ...` (each takes every N-th "
        "example, or every N-th image of multi-turn data).",
    )
    p.add_argument(
        "--model", default=None, help="an InstructPix2Pix model (file or diffusers folder); none: score the data"
    )
    p.add_argument(
        "--data", required=True, help="a dataset our reader opens (paper layout, parquet, MagicBrush, save_to_disk)"
    )
    p.add_argument("--out", required=True, help="the evaluation folder (missing, empty, or this evaluation's: resumed)")
    p.add_argument("--clip", default=None, help="a local CLIP folder (transformers format) for the CLIP metrics")
    p.add_argument("--dino", default=None, help="a local DINO folder (transformers ViT/Dinov2) for the DINO metric")
    p.add_argument("--text-cfg", default="7.5", help="text guidance scale(s), comma-separated (7.5)")
    p.add_argument(
        "--image-cfg",
        default=",".join(f"{v:g}" for v in DEFAULT_IMAGE_CFG),
        help="image guidance scale(s), comma-separated (the paper's sweep 1.0,1.2,…,2.2)",
    )
    p.add_argument("--steps", type=int, default=100, help="sampling steps (100, as the paper)")
    p.add_argument("--sampler", default="euler_ancestral", help="ComfyUI sampler name (euler_ancestral)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of every edit (0)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N examples only")
    p.add_argument("--batch", type=int, default=1, help="examples of one size per editor call (1)")
    p.add_argument(
        "--reanchor",
        action="store_true",
        help="multi-turn data: edit every turn from its own source image (MagicBrush's single-turn setting), "
        "not from the previous turn's edit",
    )
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available), cpu, cuda:1 …")
    p.add_argument("--dtype", default="auto", choices=devices.DTYPES, help="auto: float16 on GPU, float32 on CPU")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..datasets.reader import open_dataset
    from ..formats.hashing import model_hash
    from ..grid import parse_scales
    from ..headless.evaluate import EvalSettings, Scorers, evaluate, plan

    settings = EvalSettings(
        text_cfg=tuple(parse_scales(args.text_cfg, "--text-cfg")),
        image_cfg=tuple(parse_scales(args.image_cfg, "--image-cfg")),
        steps=args.steps,
        seed=args.seed,
        sampler=args.sampler,
        limit=args.limit,
        batch=args.batch,
        reanchor=args.reanchor,
    )
    if args.model is not None:  # the edit settings themselves, before anything loads
        from ..headless.editor import EditSettings

        EditSettings("check", steps=args.steps, sampler=args.sampler, seed=args.seed)
    if args.clip is not None:
        from ..clip_filter import check_clip_folder

        check_clip_folder(args.clip)
    if args.dino is not None:
        from ..quality.dino import check_dino_folder

        check_dino_folder(args.dino)
    rank, world, local_rank = devices.launched_process()
    dataset = open_dataset(args.data)
    _, mine, _ = plan(dataset, settings, rank, world)  # no example, or a turn missing: refused before any model loads
    multi_turn = args.model is not None and dataset.turns is not None
    if args.reanchor and not multi_turn:
        logger.warning("--reanchor applies to multi-turn data edited by a --model only; ignored here.")
    device = devices.process_device(args.device, world, local_rank)
    dtype = devices.resolve_dtype(args.dtype, device)
    record = {
        "model": model_hash(args.model) if args.model else None,
        "data": str(Path(args.data).resolve()),
        "examples": len(dataset),
        "clip": model_hash(args.clip) if args.clip else None,
        "dino": model_hash(args.dino) if args.dino else None,
        "text_cfg": list(settings.text_cfg) if args.model else None,
        "image_cfg": list(settings.image_cfg) if args.model else None,
        "steps": settings.steps if args.model else None,
        "sampler": settings.sampler if args.model else None,
        "seed": settings.seed if args.model else None,
        "limit": settings.limit,
        "reanchor": settings.reanchor if multi_turn else None,
        "dtype": str(dtype).removeprefix("torch."),
    }
    model = None
    if args.model is not None:
        from ..headless.loading import load_edit_model

        model = load_edit_model(args.model, require_edit=True, device=str(device), dtype=dtype)
    scorers = Scorers()
    if args.clip is not None:
        from ..clip_filter import ClipScorer

        scorers.clip = ClipScorer.from_folder(args.clip, device=device, dtype=dtype)
    if args.dino is not None:
        from ..quality.dino import DinoScorer

        scorers.dino = DinoScorer.from_folder(args.dino, device=device, dtype=dtype)

    from tqdm.auto import tqdm

    total = len(mine) * (len(settings.pairs()) if model is not None else 1)
    desc = f"ip2p eval [{rank}/{world}]" if world > 1 else "ip2p eval"
    with tqdm(total=total, desc=desc, unit="edit", disable=args.quiet) as bar:
        summary = evaluate(
            dataset,
            args.out,
            settings,
            record=record,
            model=model,
            scorers=scorers,
            rank=rank,
            world=world,
            progress=bar.update,
        )
    if summary is None:
        logger.info(
            "Process %d of %d: its %d example(s) done; the last process to finish writes %s",
            rank,
            world,
            len(mine),
            Path(args.out) / "metrics.json",
        )
        return 0
    for pair in summary["pairs"]:
        scales = (
            "dataset pairs" if pair["text_cfg"] is None else f"text {pair['text_cfg']:g}, image {pair['image_cfg']:g}"
        )
        means = ", ".join(f"{name} {value['mean']:.4f}" for name, value in pair["metrics"].items())
        failed = sum(pair["failed"].values())
        logger.info("%s: %d examples%s; %s", scales, pair["examples"], f" ({failed} failed)" if failed else "", means)
        if pair.get("final_turn"):
            final = ", ".join(f"{name} {value['mean']:.4f}" for name, value in pair["final_turn"].items())
            logger.info("  at each image's final turn: %s", final)
    logger.info("Wrote %s", Path(args.out) / "metrics.json")
    if not any(pair["metrics"] for pair in summary["pairs"]):
        raise IP2PError(
            f"No metric could be computed (see {Path(args.out) / 'metrics.json'}: every one was skipped or every edit "
            f"failed). Give --clip (and --model for the target metrics)."
        )
    return 0

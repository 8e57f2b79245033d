"""``ip2p train``: train an InstructPix2Pix model (the trainer ``ip2p_train`` is imported only when it runs)."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "train",
        parents=[common],
        help="train an InstructPix2Pix model from a config (one process; several: accelerate launch -m ip2p_train)",
        description="Train an InstructPix2Pix model: CONFIG is a YAML file or a shipped config (sd15, toy), then "
        "dotted KEY=VALUE overrides. The run folder (output_dir) gets config.yaml, metrics.jsonl, checkpoints/ "
        "and export/ (a diffusers folder and one .safetensors). For several GPUs: accelerate launch -m ip2p_train "
        "CONFIG KEY=VALUE ...",
    )
    add_arguments(p)
    p.set_defaults(handler=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The trainer's arguments, for ``ip2p train`` and ``accelerate launch -m ip2p_train`` alike.

    Declared in the core's CLI so that ``ip2p --help`` never loads the trainer.
    """
    p.add_argument("config", help="a YAML config file, or the name of a shipped config (sd15, toy)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, values read as YAML (e.g. data.path=/data/ip2p max_steps=40 optim.lr=5e-5)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue a run: `latest` (its highest complete checkpoint) or a checkpoints/step-N folder",
    )


def run(args: argparse.Namespace) -> int:
    from ip2p_train.entry import run as train

    out = train(args)
    logger.info("Finished: %s (model in %s)", out, out / "export")
    return 0

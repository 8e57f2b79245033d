"""The trainer's command line, shared by ``ip2p train`` and ``accelerate launch -m ip2p_train``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a YAML config file, or the name of a shipped config (sd15, toy)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, values read as YAML (e.g. data.path=/data/ip2p max_steps=40 optim.lr=5e-5)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue a run: `latest` (its highest complete checkpoint) or a checkpoints/step-N folder",
    )


def run(args: argparse.Namespace) -> Path:
    """Load the config and train; returns the run folder."""
    from .config import load_config
    from .loop import train

    config = load_config(args.config, args.overrides)
    return train(config, resume=args.resume)

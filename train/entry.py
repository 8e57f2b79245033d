"""The trainer's entry, shared by ``ip2p train`` and ``accelerate launch -m ip2p_train`` (arguments: :mod:`ip2p.cli.train`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> Path:
    """Load the config and train; returns the run folder."""
    from .config import load_config
    from .loop import train

    config = load_config(args.config, args.overrides)
    return train(config, resume=args.resume)

"""``accelerate launch -m ip2p_train CONFIG.yaml key=value ... [--resume latest|PATH]``: one process of a run."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub: set before diffusers or transformers load

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from ip2p.cli.train import add_arguments  # noqa: E402
from ip2p.errors import IP2PError  # noqa: E402

from .entry import run  # noqa: E402

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ip2p_train", description="Train an InstructPix2Pix model.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-file checkpoint messages
    try:
        run(args)
    except IP2PError as exc:
        sys.stderr.write("error: " + " ".join(str(exc).split()) + "\n")
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())

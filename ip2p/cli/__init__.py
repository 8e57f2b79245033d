"""The ``ip2p`` command line (console script ``ip2p``): a thin parser and one module per command."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]

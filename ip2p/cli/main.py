"""The ``ip2p`` command line: parses, sets up logging, maps user errors to one line.

Each command is one module beside this one (``edit``, ``convert``, ``demo``, ``dataset``, ``generate``,
``eval``, ``train``, ``lora``) with ``add(commands, common)`` declaring its arguments and
the handler that runs it. User errors (:class:`IP2PError`, missing files, bad arguments) print one
line to stderr and exit 2, with no traceback and no output file; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import os

# Never reach for a hub: set before anything imports huggingface_hub (diffusers, transformers).
os.environ["HF_HUB_OFFLINE"] = "1"

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from .. import __version__  # noqa: E402
from ..errors import IP2PError  # noqa: E402
from ..formats.atomic import Terminated, interrupts_unwind  # noqa: E402
from . import convert, dataset, demo, edit, evaluate, generate, lora, train  # noqa: E402

logger = logging.getLogger("ip2p")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM

# Commands in help order.
COMMANDS = (edit, convert, demo, dataset, generate, evaluate, train, lora)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other user error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print_error(f"{self.prog}: {message} (see `{self.prog} --help`)")
        raise SystemExit(EXIT_USER_ERROR)


def print_error(message: str) -> None:
    sys.stderr.write("error: " + " ".join(str(message).split()) + "\n")


def _global_options(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="only warnings and errors")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ip2p", description="InstructPix2Pix: edit images by written instructions.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, default=False)
    # The same options after the command name (`ip2p edit ... -q`); SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add(commands, common)
    return parser


class _TerminalLogging:
    """Messages of the ``ip2p`` loggers on stderr for one run, then the logging setup as it was."""

    def __init__(self, quiet: bool) -> None:
        self.level = logging.WARNING if quiet else logging.INFO
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        self.handler.setLevel(self.level)
        self.logger = logging.getLogger("ip2p")

    def __enter__(self) -> None:
        self.saved_level = self.logger.level
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > self.level:
            self.logger.setLevel(self.level)

    def __exit__(self, *exc_info: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.saved_level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error, 130 Ctrl-C, 143 SIGTERM).

    SIGINT and SIGTERM unwind the command like an exception, so every temporary file and folder is
    removed on the way out (:mod:`ip2p.formats.atomic`); outputs already finished stay.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    try:
        with interrupts_unwind(), _TerminalLogging(args.quiet):
            return args.handler(args)
    except IP2PError as exc:
        print_error(str(exc))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        print_error(f"{exc.strerror or exc}: {exc.filename}. Check the path.")
    except KeyboardInterrupt as exc:  # Ctrl-C, or Terminated for SIGTERM
        print_error("interrupted; no partial output was written.")
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())

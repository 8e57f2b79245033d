"""Datasets written a prompt at a time, in either layout: what ``ip2p generate`` and the ComfyUI
dataset writer share.

A prompt's pairs are written whole and then marked done with the prompt's key (and a summary);
a done prompt is skipped on resume, a prompt cut short is redone whole, and a done prompt whose
key is not the triple now at its index (the prompt file changed) is refused rather than mixed in.

- paper: a prompt folder with its pairs, then :data:`DONE_FILE`; a folder without it (cut short
  by a crash) is cleared before the prompt is redone, and a write that fails (a full disk)
  removes the prompt's folder at once.
- parquet: a prompt's pairs and its done record are one group of the writer, written in the same
  shard (the shard's rename makes the prompt done). Shards are written every ``shard_rows``
  rows: Ctrl-C and SIGTERM write the prompts finished so far, a kill -9 loses those not yet in a
  shard (the rerun redoes them).

A prompt is named by its index (its folder, its group and its pairs' ``example_key``
``NNNNNNN/seed``, as ``ip2p dataset convert`` names them), so processes writing different
prompts never collide.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..errors import IP2PError
from ..images import to_uint8
from ..prompts import PromptTriple
from .paper import PaperLayoutWriter, folder_name, write_text_file
from .parquet_writer import ParquetLayoutWriter

LAYOUTS = ("paper", "parquet")
DONE_FILE = "done.json"  # in a prompt folder: the prompt is finished (its summary and key)


def check_same_prompt(done: dict, triple: PromptTriple, where: str) -> None:
    """A done prompt is only skipped when it is this triple: a changed prompt file is refused, not mixed in."""
    if done.get("key") != triple.key:
        raise IP2PError(
            f"{where} was done for another prompt (key {done.get('key')}) than prompt {triple.key} "
            f"({triple.instruction!r}) at this index: the prompt file changed since that run. Resume with the same "
            f"prompt file, or write into an empty folder."
        )


class PaperOutput:
    """The paper's layout: a prompt folder with its pairs, then :data:`DONE_FILE`."""

    def __init__(self, out: Path) -> None:
        self.writer = PaperLayoutWriter(out, image_format="jpg")

    def is_done(self, index: int, triple: PromptTriple) -> bool:
        path = self.writer.folder(index) / DONE_FILE
        if not path.is_file():
            return False
        check_same_prompt(json.loads(path.read_text(encoding="utf-8")), triple, str(path))
        return True

    def write(self, index: int, triple: PromptTriple, kept: list[tuple[dict, torch.Tensor]], done: dict) -> None:
        folder = self.writer.folder(index)
        if folder.exists():  # cut short before: its pairs may differ from this run's (GPU noise)
            shutil.rmtree(folder)
        try:
            for record, images in kept:
                image0, image1 = (to_uint8(image) for image in images)
                self.writer.add(index, triple.as_prompt(), record["seed"], image0, image1, metadata=record)
            write_text_file(folder / DONE_FILE, json.dumps(done) + "\n")  # last: the prompt is finished
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a full disk or Ctrl-C leaves no part of the prompt
            raise

    def __enter__(self) -> PaperOutput:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.writer.finish()


class ParquetOutput:
    """Hugging Face parquet shards: a prompt is one group of the writer, its pairs and :data:`DONE_FILE`'s record."""

    def __init__(self, out: Path, shard_rows: int) -> None:
        self.writer = ParquetLayoutWriter(out, image_format="jpg", shard_rows=shard_rows)

    def is_done(self, index: int, triple: PromptTriple) -> bool:
        done = self.writer.groups.get(folder_name(index))
        if done is None:
            return False
        check_same_prompt(done, triple, f"Prompt {folder_name(index)} of {self.writer.root}")
        return True

    def write(self, index: int, triple: PromptTriple, kept: list[tuple[dict, torch.Tensor]], done: dict) -> None:
        examples = [
            (f"{folder_name(index)}/{record['seed']}", triple.as_prompt(), *map(to_uint8, images), record)
            for record, images in kept
        ]
        self.writer.add_group(folder_name(index), examples, done)

    def __enter__(self) -> ParquetOutput:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.writer.__exit__(kind, value, traceback)


def open_output(layout: str, out: Path, shard_rows: int = 1000) -> PaperOutput | ParquetOutput:
    """The writer of ``layout`` for ``out``; use it as a context manager (leaving it finishes the dataset)."""
    if layout == "paper":
        return PaperOutput(out)
    if layout == "parquet":
        return ParquetOutput(out, shard_rows)
    raise IP2PError(f"Unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUTS)}.")

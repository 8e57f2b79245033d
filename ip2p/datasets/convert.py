"""Converting a dataset to the paper's layout or to parquet: read by :func:`.reader.open_dataset`,
written by :class:`.paper.PaperLayoutWriter` or :class:`.parquet_writer.ParquetLayoutWriter`.

Where each example goes:

- **parquet**: ``example_key`` is the source's key (``0000123/4567``, ``data/train/00000:17``);
  captions, seed and metadata are carried (:func:`.fields.example_fields`).
- **paper**: from a paper source with numbered folders, the same folder and seed. From any other,
  each prompt (input caption, instruction, edited caption) gets a folder in order of first
  appearance, and the seed is the source's ``seed``, or the row's index in the source when it has
  none; a row repeating a (prompt, seed) goes to that prompt's next folder, so no row is lost.
  Missing captions are written as empty strings. Other image values become ``{seed}_{name}.png``.

Values neither layout can hold (raw bytes, arrays; extra images going to parquet) are left out and
counted. Writing is resumable: a rerun into the same destination skips what is there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IP2PError
from .fields import Fields, example_fields
from .outputs import LAYOUTS
from .paper import EXTRA_NAME, FOLDER_DIGITS, PaperLayoutWriter
from .parquet_writer import ParquetLayoutWriter
from .rows import BadExampleError, EditDataset

logger = logging.getLogger(__name__)

CAPTION_FILL = ""  # what the paper layout's prompt.json gets for a caption the source lacks


@dataclass
class ConvertReport:
    """What a conversion did: pairs written, found already written, unreadable, and what was filled or left out."""

    written: int = 0
    already: int = 0
    bad: dict[str, int] = field(default_factory=dict)  # rows that failed to decode, by reason
    filled_captions: int = 0  # paper target: pairs whose prompt.json got an empty caption
    seeds_from_index: int = 0  # paper target: pairs whose seed is their row index
    dropped: dict[str, int] = field(default_factory=dict)  # values left out, by name


def check_destination(dst: Path, to: str, source: Path) -> None:
    """Refuse a destination that overlaps the source or holds anything but this layout's own output."""
    if to not in LAYOUTS:
        raise IP2PError(f"Unknown target layout {to!r}; choose one of {', '.join(LAYOUTS)}.")
    src, out = source.resolve(), dst.resolve()
    if out == src or src in out.parents or out in src.parents:
        raise IP2PError(f"The destination {dst} overlaps the source {source}. Choose a folder outside it.")
    if not dst.exists():
        return
    if not dst.is_dir():
        raise IP2PError(f"The destination {dst} is a file; give a folder (missing or empty).")
    names = sorted(n for n in os.listdir(dst) if not n.startswith("."))
    if to == "parquet":
        foreign = [n for n in names if n != "data"]
    else:
        foreign = [n for n in names if n != "seeds.json" and not (len(n) == FOLDER_DIGITS and n.isdigit())]
    if foreign:
        raise IP2PError(
            f"The destination {dst} holds {', '.join(foreign[:3])}{' …' if len(foreign) > 3 else ''}, which a "
            f"{to} dataset written here would not. Give a missing or empty folder (or the destination of an "
            f"unfinished conversion to {to}, to resume it)."
        )


def _paper_keys(source: EditDataset) -> list[tuple[int, int]] | None:
    """(folder index, seed) per example when the source is the paper layout with numbered folders."""
    if source.layout != "paper":
        return None
    places = []
    for index in range(len(source)):
        folder, _, seed = source.key(index).partition("/")
        if not (folder.isdigit() and seed.isdigit()):
            return None
        places.append((int(folder), int(seed)))
    return places


class _Folders:
    """Prompt folders for a source without them: one per prompt, another when a seed repeats."""

    def __init__(self) -> None:
        self._by_prompt: dict[tuple, list[int]] = {}
        self._seeds: list[set[int]] = []

    def place(self, fields: Fields, seed: int) -> int:
        prompt = (fields.input_caption, fields.instruction, fields.output_caption)
        folders = self._by_prompt.setdefault(prompt, [])
        for folder in folders:
            if seed not in self._seeds[folder]:
                break
        else:
            folder = len(self._seeds)
            folders.append(folder)
            self._seeds.append(set())
        self._seeds[folder].add(seed)
        return folder


class _Notes:
    """One info line the first time each kind of fill or omission happens."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.said: set[str] = set()

    def once(self, kind: str, message: str) -> None:
        if kind not in self.said:
            self.said.add(kind)
            logger.info("Note: %s %s", self.source, message)


def convert_dataset(
    source: EditDataset,
    dst: str | os.PathLike,
    to: str,
    *,
    image_format: str = "png",
    shard_rows: int = 1000,
    progress: Callable[[int], object] | None = None,
) -> ConvertReport:
    """Write every example of ``source`` into ``dst`` in the layout ``to`` (``"paper"`` or ``"parquet"``).

    ``image_format``: ``"png"`` (lossless) or ``"jpg"`` (quality 95). ``progress`` is called with 1
    per source example. Unreadable rows are counted in the report and skipped.
    """
    dst = Path(dst)
    check_destination(dst, to, Path(source.path))
    report = ConvertReport()
    notes = _Notes(Path(source.path))
    if to == "parquet":
        with ParquetLayoutWriter(dst, image_format=image_format, shard_rows=shard_rows) as writer:
            for index in range(len(source)):
                _to_parquet(source, index, writer, report, notes)
                if progress is not None:
                    progress(1)
        return report
    writer = PaperLayoutWriter(dst, image_format=image_format)
    places = _paper_keys(source)
    folders = _Folders()
    for index in range(len(source)):
        _to_paper(source, index, writer, places, folders, report, notes)
        if progress is not None:
            progress(1)
    writer.finish()
    return report


def _load(source: EditDataset, index: int, report: ConvertReport):
    try:
        return source[index]
    except BadExampleError as exc:
        report.bad[exc.reason] = report.bad.get(exc.reason, 0) + 1
        return None


def _drop(report: ConvertReport, names, notes: _Notes, target: str) -> None:
    for name in names:
        report.dropped[name] = report.dropped.get(name, 0) + 1
        notes.once(f"drop {name}", f"has values under {name!r} that the {target} layout cannot hold: left out.")


def _to_parquet(source, index, writer: ParquetLayoutWriter, report: ConvertReport, notes: _Notes) -> None:
    key = source.key(index)
    if writer.has(key):
        report.already += 1
        return
    example = _load(source, index, report)
    if example is None:
        return
    fields = example_fields(example)
    _drop(report, [*fields.dropped, *fields.images], notes, "parquet")
    writer.add(key, fields.prompt(), example.input_image, example.edited_image, metadata=fields.metadata)
    report.written += 1


def _to_paper(source, index, writer: PaperLayoutWriter, places, folders, report: ConvertReport, notes) -> None:
    if places is not None and writer.has(*places[index]):
        report.already += 1
        return
    example = _load(source, index, report)
    if example is None:
        return
    fields = example_fields(example)
    if places is not None:
        folder, seed = places[index]
    else:
        seed = fields.seed()
        if seed is None or seed < 0:
            seed = index
            report.seeds_from_index += 1
            notes.once("seed", "has no seed for some rows: the paper layout's seed is the row's index there.")
        folder = folders.place(fields, seed)
        if writer.has(folder, seed):
            report.already += 1
            return
    if fields.input_caption is None or fields.output_caption is None:
        report.filled_captions += 1
        notes.once("caption", 'lacks input or edited captions: prompt.json gets empty ones ("") there.')
    images = {n: im for n, im in fields.images.items() if EXTRA_NAME.match(n) and n not in ("0", "1")}
    _drop(report, [*fields.dropped, *(n for n in fields.images if n not in images)], notes, "paper")
    metadata = {k: v for k, v in fields.metadata.items() if k != "seed"}
    writer.add(
        folder, fields.prompt(fill=CAPTION_FILL), seed, example.input_image, example.edited_image, metadata, images
    )
    report.written += 1

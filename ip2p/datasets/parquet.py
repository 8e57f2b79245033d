"""Reading tabular datasets with pyarrow: Hugging Face parquet shards and ``datasets`` folders.

- parquet: one ``.parquet`` file, or a folder whose shards are found at its root, under ``data/``
  or deeper (``data/train-00000-of-00002.parquet``, ``default/train/0000.parquet``). A shard's
  split is its name's prefix (``train-00000-of-00002`` → ``train``) or its folder (``train/``).
- arrow: a ``Dataset.save_to_disk`` folder (``state.json`` lists its ``*.arrow`` IPC stream files,
  ``dataset_info.json`` its features), or a ``DatasetDict`` folder (``dataset_dict.json`` and one
  such folder per split), or one ``.arrow`` file.

MagicBrush's schema (columns ``img_id``, ``turn_index``, ``source_img``, ``mask_img``,
``instruction``, ``target_img``) is recognised by its columns: each row is one turn of an image
(input ``source_img``, edited ``target_img``, key ``{img_id}-{turn_index}``), its ``mask_img``
is the example's ``mask`` extra as a greyscale image (white: the edit region, as the paper
layout's ``{seed}_mask.png``), and the dataset's ``turns`` list each example's (img_id, turn_index).

Image columns hold the ``datasets`` Image feature (a struct ``{bytes, path}``; ``path`` alone is
read relative to the shard's folder when not absolute), raw binary, or a path string. Open time
reads only the instruction column (empty ones are skipped); an example's row group is read when
it is asked for, with the last two row groups cached per process. Arrow files are memory-mapped.
File handles are opened lazily in each process, so the dataset can go to DataLoader workers.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np

from ..errors import IP2PError
from . import EditExample
from .rows import (
    DEFAULT_COLUMNS,
    EMPTY_INSTRUCTION,
    MISSING_IMAGE,
    BadExampleError,
    EditDataset,
    SkipCounter,
    check_pair_headers,
    checked_pair,
    decode_image,
)

# MagicBrush (Zhang et al. 2023, osunlp/MagicBrush): each row one turn of an image's edits, no captions.
MAGICBRUSH_COLUMNS = ("img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img")
MAGICBRUSH_ROLES = {"input_image": "source_img", "edit_prompt": "instruction", "edited_image": "target_img"}
_MAGICBRUSH_ONLY = ("img_id", "turn_index", "source_img", "mask_img", "target_img")  # names that say it is MagicBrush
_CACHED_GROUPS = 2  # row groups kept decoded per process (sequential and shard-local reads hit it)
_HUB_SHARD = re.compile(r"^(?P<split>.+?)-\d+-of-\d+")  # train-00000-of-00002(.suffix)


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError as exc:
        raise IP2PError(f"Reading parquet or `datasets` folders needs pyarrow ({exc}): pip install pyarrow") from exc
    return pyarrow


# ----------------------------------------------------------------------------------------- shards


class _Shard:
    """One file: its key prefix, the row counts of its row groups, and a lazily opened handle."""

    def __init__(self, path: Path, name: str, kind: str) -> None:
        self.path = path
        self.name = name
        self.kind = kind  # "parquet" or "arrow"
        self._handle = None
        self._pid = -1
        self.group_rows: list[int] = [0]
        self.schema = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": -1}

    def handle(self):
        """A ParquetFile, or the memory-mapped arrow Table; reopened after a fork."""
        if self._handle is None or self._pid != os.getpid():
            pa = _pyarrow()
            if self.kind == "parquet":
                self._handle = pa.parquet.ParquetFile(self.path, memory_map=True)
            else:
                self._handle = _read_arrow_table(self.path)
            self._pid = os.getpid()
        return self._handle

    def describe(self) -> None:
        handle = self.handle()
        if self.kind == "parquet":
            self.schema = handle.schema_arrow
            self.group_rows = [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
        else:
            self.schema = handle.schema
            self.group_rows = [handle.num_rows]

    def read_column(self, name: str):
        handle = self.handle()
        if self.kind == "parquet":
            return handle.read(columns=[name]).column(0)
        return handle.column(name)

    def read_group(self, group: int, columns: list[str]):
        handle = self.handle()
        if self.kind == "parquet":
            return handle.read_row_group(group, columns=columns)
        return handle.select(columns)


def _read_arrow_table(path: Path):
    pa = _pyarrow()
    source = pa.memory_map(str(path), "r")
    try:
        return pa.ipc.open_stream(source).read_all()  # what save_to_disk writes
    except pa.ArrowInvalid:
        source.seek(0)
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid as exc:
            raise IP2PError(f"{path} is not an Arrow IPC stream or file ({exc}). Re-save the dataset.") from exc


# ---------------------------------------------------------------------------------------- finding


def _split_of(relative: Path) -> str | None:
    match = _HUB_SHARD.match(relative.name)
    if match:
        return match.group("split")
    parent = relative.parent
    if parent != Path(".") and parent.name != "data":
        return parent.name
    return None


def find_parquet_files(root: Path) -> list[Path]:
    """All ``*.parquet`` under ``root`` (hidden folders left out), sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath, f) for f in filenames if f.lower().endswith(".parquet") and not f.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _select_split(root: Path, files: list[Path], split: str | None) -> list[Path]:
    by_split: dict[str | None, list[Path]] = {}
    for path in files:
        by_split.setdefault(_split_of(path.relative_to(root)), []).append(path)
    names = sorted(s for s in by_split if s is not None)
    if split is not None:
        if split not in by_split:
            raise IP2PError(
                f"No parquet shards of split {split!r} in {root}; the splits found are "
                f"{', '.join(names) or 'none (the shard names carry no split)'}. Set data.split to one of them."
            )
        return by_split[split]
    if len(names) <= 1:
        return files
    if "train" in by_split:
        return by_split["train"]
    raise IP2PError(f"{root} holds several splits ({', '.join(names)}); choose one with data.split=NAME.")


def is_arrow_folder(root: Path) -> bool:
    return (root / "state.json").is_file() or (root / "dataset_dict.json").is_file()


def _arrow_files(root: Path, split: str | None) -> tuple[Path, list[Path]]:
    """The split folder and its arrow files in ``state.json``'s order."""
    if (root / "dataset_dict.json").is_file():
        try:
            splits = [str(s) for s in json.loads((root / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IP2PError(f"{root / 'dataset_dict.json'} is unreadable ({exc}). Re-save the dataset.") from exc
        if split is None:
            if "train" in splits:
                split = "train"
            elif len(splits) == 1:
                split = splits[0]
            else:
                raise IP2PError(f"{root} holds several splits ({', '.join(splits)}); choose one with data.split=NAME.")
        if split not in splits:
            raise IP2PError(f"No split {split!r} in {root}; its splits are {', '.join(splits)}. Set data.split.")
        root = root / split
    state_path = root / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except FileNotFoundError as exc:
        raise IP2PError(f"{state_path} is missing: {root} is not a complete `datasets` save_to_disk folder.") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IP2PError(f"{state_path} is unreadable ({exc}). Re-save the dataset with save_to_disk.") from exc
    return root, [root / name for name in names]


# ---------------------------------------------------------------------------------------- columns


def _is_image_type(pa, dtype) -> bool:
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
        return True
    if pa.types.is_struct(dtype):
        names = [dtype.field(i).name for i in range(dtype.num_fields)]
        return "bytes" in names
    return False


def _is_text_type(pa, dtype) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _check_columns(pa, shard: _Shard, mapping: dict[str, str]) -> None:
    schema = shard.schema
    present = list(schema.names)
    for role in DEFAULT_COLUMNS:
        name = mapping[role]
        if name in present:
            dtype = schema.field(name).type
            image_role = role != "edit_prompt"
            ok = (_is_image_type(pa, dtype) or _is_text_type(pa, dtype)) if image_role else _is_text_type(pa, dtype)
            if not ok:
                expected = "images (Image feature, binary, or a path)" if image_role else "text"
                raise IP2PError(
                    f"Column {name!r} in {shard.path} holds {dtype}, expected {expected} for {role}. "
                    f"Map another column with data.columns.{role}=NAME."
                )
            continue
        if role == "edit_prompt":
            fitting = [c for c in present if _is_text_type(pa, schema.field(c).type)]
        else:
            fitting = [c for c in present if _is_image_type(pa, schema.field(c).type)]
        fitting = [c for c in fitting if c not in mapping.values()]
        ranked = sorted(fitting, key=lambda c: -difflib.SequenceMatcher(None, name, c).ratio())
        ranked += difflib.get_close_matches(name, [c for c in present if c not in ranked], n=2, cutoff=0.6)
        hint = f" (closest: {', '.join(repr(c) for c in ranked[:3])})" if ranked else ""
        raise IP2PError(
            f"Column {name!r} not found in {shard.path}; columns are {', '.join(present)}{hint}. "
            f"Map them with data.columns.{role}=NAME."
        )


def _is_magicbrush(shard: _Shard, mapping: dict[str, str]) -> bool:
    """Whether ``shard`` holds MagicBrush's schema; one with part of it (and not our default columns) is refused
    naming what it lacks. A column mapping always reads the file as plain pairs."""
    present = set(shard.schema.names)
    if mapping != DEFAULT_COLUMNS or set(DEFAULT_COLUMNS.values()) <= present or not present & set(_MAGICBRUSH_ONLY):
        return False
    missing = [c for c in MAGICBRUSH_COLUMNS if c not in present]
    if missing:
        raise IP2PError(
            f"{shard.path} has part of MagicBrush's schema but lacks the column(s) {', '.join(missing)} "
            f"(MagicBrush's are {', '.join(MAGICBRUSH_COLUMNS)}; its columns are {', '.join(shard.schema.names)}). "
            f"Give complete MagicBrush shards, or map the columns (data.columns.input_image=NAME …) to read plain pairs."
        )
    return True


def _turn_ids(pa, shard: _Shard) -> tuple[list[str], list[int]]:
    """MagicBrush's img_id and turn_index columns of one shard (read at open time, no image decoded)."""
    if not pa.types.is_integer(shard.schema.field("turn_index").type):
        raise IP2PError(
            f"Column 'turn_index' in {shard.path} holds {shard.schema.field('turn_index').type}, expected integers "
            f"(MagicBrush's turn 1, 2, …)."
        )
    return [str(v) for v in shard.read_column("img_id").to_pylist()], shard.read_column("turn_index").to_pylist()


# ---------------------------------------------------------------------------------------- dataset


class TabularDataset(EditDataset):
    """Rows of parquet shards or arrow files; see the module docstring."""

    def __init__(
        self,
        root: Path,
        layout: str,
        shards: list[_Shard],
        mapping: dict[str, str],
        rows: np.ndarray,
        skipped: dict[str, int],
        turn_ids: list[tuple[list[str], list[int]]] | None = None,
    ) -> None:
        super().__init__(root, skipped)
        self.layout = layout
        self.columns = dict(mapping)
        self._shards = shards
        self._rows = rows  # (N, 2) int64: shard index, row within the shard
        if turn_ids is not None:  # MagicBrush: (img_id, turn_index) per shard row
            self.turns = [(turn_ids[s][0][r], int(turn_ids[s][1][r])) for s, r in rows.tolist()]
        self._offsets = [np.cumsum([0, *s.group_rows]) for s in shards]
        self._cache: OrderedDict = OrderedDict()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": OrderedDict()}

    def __len__(self) -> int:
        return len(self._rows)

    def _key(self, index: int) -> str:
        if self.turns is not None:
            image, turn = self.turns[index]
            return f"{image}-{turn}"
        shard, row = self._rows[index]
        return f"{self._shards[shard].name}:{int(row)}"

    def _row(self, index: int) -> tuple[_Shard, dict]:
        shard_index, row = (int(v) for v in self._rows[index])
        shard = self._shards[shard_index]
        offsets = self._offsets[shard_index]
        group = int(np.searchsorted(offsets, row, side="right")) - 1
        cache_key = (shard_index, group, os.getpid())
        table = self._cache.get(cache_key)
        if table is None:
            table = shard.read_group(group, list(shard.schema.names))
            self._cache[cache_key] = table
            while len(self._cache) > _CACHED_GROUPS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(cache_key)
        position = row - int(offsets[group])
        return shard, {name: table.column(name)[position].as_py() for name in table.column_names}

    def _load(self, index: int) -> EditExample:
        pa = _pyarrow()
        shard, values = self._row(index)
        key = self._key(index)
        sources = [_image_source(values[self.columns[r]], shard, key) for r in ("input_image", "edited_image")]
        input_image, edited_image = checked_pair(sources[0], sources[1], key)
        extra = {}
        for name, value in values.items():
            if name in self.columns.values():
                continue
            if (
                value is not None
                and pa.types.is_struct(shard.schema.field(name).type)
                and _is_image_type(pa, shard.schema.field(name).type)
            ):  # another Image feature, e.g. an edit mask: decoded, mode kept; raw binary stays bytes
                value = decode_image(_image_source(value, shard, key), key, rgb=False)
            extra[name] = value
        if self.turns is not None and (mask := extra.pop("mask_img", None)) is not None:
            extra["mask"] = mask.convert("L")  # white: the edit region, as the paper layout's {seed}_mask.png
        return EditExample(input_image, values[self.columns["edit_prompt"]], edited_image, key, extra)


def _image_source(value, shard: _Shard, key: str) -> bytes | Path:
    """The bytes or file of one image cell (Image struct, raw binary, or a path string)."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str) and value:
        path = Path(value)
        path = path if path.is_absolute() else shard.path.parent / path
        if not path.is_file():
            raise BadExampleError(key, MISSING_IMAGE, f"{path} does not exist")
        return path
    raise BadExampleError(key, MISSING_IMAGE, "the image cell is empty")


def _open_tabular(
    root: Path, layout: str, shards: list[_Shard], mapping: dict[str, str], verify_images: bool
) -> TabularDataset:
    pa = _pyarrow()
    skips = SkipCounter()
    kept: list[np.ndarray] = []
    for shard in shards:
        shard.describe()
    turn_ids = None
    if _is_magicbrush(shards[0], mapping):
        layout, mapping = "magicbrush", dict(MAGICBRUSH_ROLES)
        other = next((shard for shard in shards if not _is_magicbrush(shard, DEFAULT_COLUMNS)), None)
        if other is not None:
            raise IP2PError(
                f"{shards[0].path} holds MagicBrush's schema but {other.path} does not (its columns are "
                f"{', '.join(other.schema.names)}). Give one dataset's shards only."
            )
        turn_ids = [_turn_ids(pa, shard) for shard in shards]
    for index, shard in enumerate(shards):
        _check_columns(pa, shard, mapping)
        text = shard.read_column(mapping["edit_prompt"])
        usable = pa.compute.fill_null(
            pa.compute.not_equal(pa.compute.utf8_trim_whitespace(text), pa.scalar("")), False
        ).to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(~usable):
            skips.add(EMPTY_INSTRUCTION, f"{shard.name}:{row}")
        rows = np.flatnonzero(usable)
        kept.append(np.stack([np.full(len(rows), index), rows], axis=1).astype(np.int64))
    rows = np.concatenate(kept) if kept else np.zeros((0, 2), dtype=np.int64)
    dataset = TabularDataset(root, layout, shards, mapping, rows, {}, turn_ids)
    if verify_images:
        rows = _verified_rows(dataset, skips)
        dataset = TabularDataset(root, layout, shards, mapping, rows, {}, turn_ids)
    if dataset.turns is not None:
        twice = [turn for turn, count in Counter(dataset.turns).items() if count > 1]
        if twice:
            image, turn = twice[0]
            raise IP2PError(
                f"{root} holds turn {turn} of image {image!r} more than once ({len(twice)} such turn(s)): each "
                f"(img_id, turn_index) must be one row. Remove the repeated rows."
            )
    dataset.skipped = dict(skips.counts)
    skips.report(root, len(dataset), "rows")
    if not len(dataset):
        found = f" Skipped: {skips.summary()}." if skips.counts else ""
        raise IP2PError(
            f"No usable rows in {root} ({len(shards)} shard(s)): looked for rows with images in "
            f"{mapping['input_image']!r} and {mapping['edited_image']!r} and a non-empty {mapping['edit_prompt']!r}.{found}"
        )
    return dataset


def _verified_rows(dataset: TabularDataset, skips: SkipCounter) -> np.ndarray:
    """The rows whose image headers read and whose sizes agree (one row group at a time)."""
    keep = []
    for index in range(len(dataset)):
        shard, values = dataset._row(index)
        key = dataset._key(index)
        try:
            sources = [_image_source(values[dataset.columns[r]], shard, key) for r in ("input_image", "edited_image")]
            check_pair_headers(sources[0], sources[1], key)
        except BadExampleError as exc:
            skips.add(exc.reason, key)
            continue
        keep.append(index)
    return dataset._rows[np.asarray(keep, dtype=np.int64)] if keep else np.zeros((0, 2), dtype=np.int64)


def open_parquet(root: Path, mapping: dict[str, str], *, split: str | None, verify_images: bool) -> TabularDataset:
    """Open one ``.parquet`` file or a folder of shards."""
    _pyarrow()
    if root.is_file():
        shards = [_Shard(root, root.stem, "parquet")]
    else:
        files = find_parquet_files(root)
        if not files:
            raise IP2PError(f"No parquet files in {root} (looked for *.parquet, data/*.parquet and deeper).")
        files = _select_split(root, files, split)
        shards = [_Shard(p, p.relative_to(root).with_suffix("").as_posix(), "parquet") for p in files]
    return _open_tabular(root, "parquet", shards, mapping, verify_images)


def open_arrow(root: Path, mapping: dict[str, str], *, split: str | None, verify_images: bool) -> TabularDataset:
    """Open a ``datasets`` save_to_disk folder (or ``DatasetDict`` folder, or one ``.arrow`` file)."""
    _pyarrow()
    if root.is_file():
        shards = [_Shard(root, root.stem, "arrow")]
    else:
        folder, files = _arrow_files(root, split)
        if not files:
            raise IP2PError(f"{folder / 'state.json'} lists no .arrow files. Re-save the dataset with save_to_disk.")
        missing = [p for p in files if not p.is_file()]
        if missing:
            raise IP2PError(
                f"{folder} is incomplete: {', '.join(p.name for p in missing)} listed in state.json "
                "but missing. Copy the whole folder."
            )
        shards = [_Shard(p, p.relative_to(root).with_suffix("").as_posix(), "arrow") for p in files]
    return _open_tabular(root, "arrow", shards, mapping, verify_images)

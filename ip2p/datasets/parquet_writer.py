"""Writing the Hugging Face parquet layout (the reader is :mod:`.parquet`).

::

    ROOT/data/{split}/00000.parquet   shards, numbered in the order they were claimed (gaps allowed)

Both ``datasets.load_dataset("parquet", data_files="ROOT/data/train/*.parquet")`` (or
``load_dataset("ROOT")``, which takes the split from the folder name) and :func:`~.reader.open_dataset`
read it. Columns, one fixed schema for every shard:

- ``input_image``, ``edit_prompt``, ``edited_image``: what diffusers' ``train_instruct_pix2pix.py``
  reads. Images are the ``datasets`` Image feature (struct ``{bytes, path}``, PNG or JPEG bytes,
  ``path`` null), declared in the schema's ``huggingface`` metadata so ``load_dataset`` decodes them;
- ``input_caption``, ``output_caption``: the captions (null when unknown), named as the paper
  reader names them in ``extra``;
- ``seed`` (uint64: every seed torch takes, up to 2**64 - 1) and ``p2p_threshold``, ``cfg_scale``, ``clip_sim_0``, ``clip_sim_1``,
  ``clip_sim_dir``, ``clip_sim_image`` (float64): the paper's metadata, null when absent;
- ``metadata_json``: every other metadata key as one JSON object (null when there is none);
- ``example_key``: the caller's identity of the example, unique in the dataset.

Atomic: rows are buffered and written a shard at a time into a hidden temporary file that is
renamed into place, so a shard is whole or absent (a full disk leaves nothing visible). Resumable:
opening the writer reads ``example_key`` from every shard; :meth:`ParquetLayoutWriter.has` says
what a rerun can skip and :meth:`~ParquetLayoutWriter.add` skips it. Several processes may write
one dataset: each claims its shard numbers with ``O_EXCL`` (:func:`.locks.claim`), so names never
collide; they should split the examples between them (keys are deduplicated against the shards
present when each writer opened, not against each other's buffers).

Groups: examples that only make sense together (a prompt's kept pairs) go in with
:meth:`~ParquetLayoutWriter.add_group`. A group's rows and its record (JSON, e.g. what was tried)
land in one shard, the record in that shard's footer (``ip2p_groups``, which ``datasets`` ignores),
so the shard's rename is the one step that makes the group visible and done: a resumed run finds
a group whole or absent (:attr:`~ParquetLayoutWriter.groups`), even a group of no rows.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from PIL import Image

from ..errors import IP2PError
from ..formats.atomic import atomic_file
from .fields import EXAMPLE_KEY, INPUT_CAPTION, METADATA_JSON, OUTPUT_CAPTION, PAPER_METADATA, SEED
from .locks import claim
from .paper import IMAGE_FORMATS, as_image, cannot_write, check_prompt
from .parquet import _pyarrow, find_parquet_files  # one place says how to install pyarrow

SHARD_DIGITS = 5
_SHARD = re.compile(r"^(\d+)\.parquet$")
_CLAIM = re.compile(r"^\.(\d+)\.parquet\.claim$")
_SPLIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COLUMNS = ("input_image", "edit_prompt", "edited_image", INPUT_CAPTION, OUTPUT_CAPTION, SEED, *PAPER_METADATA)
COLUMNS = (*_COLUMNS, METADATA_JSON, EXAMPLE_KEY)  # the shards' columns, in order
MAX_SEED = 2**64 - 1  # as ip2p.devices.MAX_SEED (not imported: this module runs without torch)
GROUPS_FOOTER = b"ip2p_groups"  # a shard's footer key: {group name: record} of the groups it holds


def schema():
    """The shards' arrow schema, with the ``huggingface`` features JSON that ``datasets`` decodes images by."""
    pa = _pyarrow()
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    types = {"input_image": image, "edited_image": image, SEED: pa.uint64()}
    types.update({name: pa.float64() for name in PAPER_METADATA})
    features = {}
    fields = []
    for name in COLUMNS:
        dtype = types.get(name, pa.string())
        fields.append(pa.field(name, dtype))
        kind = "string" if dtype == pa.string() else str(dtype).replace("double", "float64")
        features[name] = {"_type": "Image"} if dtype == image else {"dtype": kind, "_type": "Value"}
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})


def _number(name: str, value, integer: bool):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IP2PError(f"Metadata {name!r} must be a number; got {value!r}. Pass a number, or leave it out.")
    if integer:
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise IP2PError(f"Metadata {name!r} must be a whole number; got {value!r}.")
        if not 0 <= value <= MAX_SEED:
            raise IP2PError(f"Metadata {name!r} must be from 0 to 2**64 - 1 (a seed torch takes); got {value!r}.")
        return int(value)
    return float(value)


def _footer_groups(path: Path, found) -> dict[str, dict]:
    """The groups a shard's footer records (none for a shard written without groups)."""
    text = (found.metadata or {}).get(GROUPS_FOOTER)
    if text is None:
        return {}
    try:
        groups = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        groups = None
    if not isinstance(groups, dict) or not all(isinstance(r, dict) for r in groups.values()):
        raise IP2PError(f"{path} has a damaged group record in its footer ({text[:80]!r}). Delete it and run again.")
    return groups


class ParquetLayoutWriter:
    """Adds examples to a parquet dataset at ``root`` (created if missing); see the module docstring.

    Use it as a context manager (or call :meth:`close`): rows are written a shard at a time, and
    the last, partial shard when the block ends normally or by Ctrl-C (any other error discards
    the unwritten rows; a rerun writes them). ``image_format``: ``"png"`` (lossless) or ``"jpg"``
    (quality 95) for images given as pixels; encoded bytes are stored as given. A shard holds at
    most ``shard_rows`` rows or about ``shard_bytes`` of images, in row groups of ``row_group_rows``;
    a group is never split, so its shard may hold more. ``groups``: name → record of every group
    written or buffered (:meth:`add_group`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str = "train",
        image_format: str = "png",
        shard_rows: int = 1000,
        shard_bytes: int = 256 << 20,
        row_group_rows: int = 100,
    ) -> None:
        if image_format not in IMAGE_FORMATS:
            raise IP2PError(f"Unknown image format {image_format!r}; choose one of {', '.join(IMAGE_FORMATS)}.")
        if not _SPLIT.match(split):
            raise IP2PError(f"Split name {split!r} is not usable as a folder name; use letters, digits, _, - or '.'.")
        for name, value in (
            ("shard_rows", shard_rows),
            ("shard_bytes", shard_bytes),
            ("row_group_rows", row_group_rows),
        ):
            if not isinstance(value, int) or value < 1:
                raise IP2PError(f"{name} must be a whole number of 1 or more (got {value!r}).")
        self.root = Path(root)
        self.folder = self.root / "data" / split
        self.image_format = image_format
        self.shard_rows, self.shard_bytes, self.row_group_rows = shard_rows, shard_bytes, row_group_rows
        self.schema = schema()
        self.written: list[Path] = []  # shards this writer wrote
        self._rows: list[dict] = []
        self._buffered_bytes = 0
        self._buffered_groups: dict[str, dict] = {}  # groups whose rows are buffered: they go in the next shard
        self._keys, self.groups, self._next = self._read_existing()

    # -------------------------------------------------------------------------------- resume

    def _read_existing(self) -> tuple[set[str], dict[str, dict], int]:
        """The keys and groups already written, and the first shard number worth trying; foreign files refused."""
        pa = _pyarrow()
        keys: set[str] = set()
        groups: dict[str, dict] = {}
        numbers = [-1]
        if not self.root.is_dir():
            return keys, groups, 0
        for path in find_parquet_files(self.root):
            relative = path.relative_to(self.root)
            match = _SHARD.match(path.name)
            if not match or len(relative.parts) != 3 or relative.parts[0] != "data":
                raise IP2PError(
                    f"{self.root} holds {relative}, a parquet file this writer did not write (its shards are "
                    f"data/SPLIT/NNNNN.parquet). Write into an empty folder, or move that file away."
                )
            if path.parent != self.folder:
                continue  # another split's shards
            try:
                found = pa.parquet.read_schema(path)
            except (OSError, pa.ArrowException) as exc:
                raise IP2PError(f"{path} cannot be read as a shard ({exc}). Delete it and run again.") from exc
            if not found.equals(self.schema, check_metadata=False):
                raise IP2PError(
                    f"{path} has other columns ({', '.join(found.names)}) than this writer writes "
                    f"({', '.join(COLUMNS)}). Write into an empty folder."
                )
            shard_keys = pa.parquet.read_table(path, columns=[EXAMPLE_KEY]).column(0).to_pylist()
            keys.update(shard_keys)
            groups.update(_footer_groups(path, found))
            numbers.append(int(match.group(1)))
        if self.folder.is_dir():
            numbers += [int(m.group(1)) for m in map(_CLAIM.match, os.listdir(self.folder)) if m]
        return keys, groups, max(numbers) + 1

    def has(self, key: str) -> bool:
        """Whether ``key`` is written (or buffered) already: a resumed run skips it."""
        return key in self._keys

    # ---------------------------------------------------------------------------------- rows

    def add(self, key: str, prompt: Mapping, image0, image1, metadata: Mapping | None = None) -> bool:
        """Buffer one example; False (and nothing done) when ``key`` is already in the dataset.

        ``prompt``: ``{"caption" (or "input"), "edit", "output"}`` as for the paper writer (``edit``
        required; other keys go to ``metadata_json``). ``image0`` / ``image1``: the input and edited
        images (PIL, uint8 arrays, or encoded PNG/JPEG/WebP bytes). ``metadata``: ``seed``, the
        paper's metrics and any other JSON-ready values.
        """
        if key in self._keys:
            return False
        self._take([self._row(key, prompt, image0, image1, metadata)])
        self._flush_if_full()
        return True

    def add_group(self, name: str, examples: Iterable[tuple], record: Mapping | None = None) -> bool:
        """Buffer a group of examples that lands whole in one shard with ``record``; False when ``name`` is done.

        ``examples``: ``(key, prompt, image0, image1, metadata)`` tuples, as :meth:`add` takes them
        (keys already written are skipped, as by :meth:`add`). ``record``: JSON-ready values kept
        with the group and read back in :attr:`groups` (an empty group records that there was nothing
        to keep). Every example is checked before any is buffered, so a bad one leaves no part of the group.
        """
        if not isinstance(name, str) or not name:
            raise IP2PError(f"A group name must be a non-empty string (got {name!r}).")
        if name in self.groups:
            return False
        record = dict(record or {})
        try:
            json.dumps(record)
        except (TypeError, ValueError) as exc:
            raise IP2PError(
                f"The record of group {name!r} is not JSON-ready ({exc}); pass numbers, text, lists and dicts."
            ) from exc
        rows: dict[str, dict] = {}
        for key, prompt, image0, image1, metadata in examples:
            if key not in self._keys and key not in rows:
                rows[key] = self._row(key, prompt, image0, image1, metadata)
        self._take(list(rows.values()))
        self.groups[name] = self._buffered_groups[name] = record
        self._flush_if_full()
        return True

    def _row(self, key: str, prompt: Mapping, image0, image1, metadata: Mapping | None) -> dict:
        """One example as a shard row, checked and its images encoded."""
        if not isinstance(key, str) or not key:
            raise IP2PError(f"An example key must be a non-empty string (got {key!r}).")
        prompt = check_prompt(prompt)
        metadata = dict(metadata or {})
        rest = {k: v for k, v in prompt.items() if k not in ("caption", "input", "edit", "output")}
        rest.update({k: v for k, v in metadata.items() if k != SEED and k not in PAPER_METADATA and v is not None})
        try:
            packed = json.dumps(rest, ensure_ascii=False) if rest else None
        except (TypeError, ValueError) as exc:
            raise IP2PError(
                f"Metadata of {key!r} is not JSON-ready ({exc}); pass numbers, text, lists and dicts."
            ) from exc
        images = [self._encode(image, name) for image, name in ((image0, "image0"), (image1, "image1"))]
        return {
            "input_image": {"bytes": images[0], "path": None},
            "edit_prompt": prompt["edit"],
            "edited_image": {"bytes": images[1], "path": None},
            INPUT_CAPTION: prompt.get("caption", prompt.get("input")),
            OUTPUT_CAPTION: prompt.get("output"),
            SEED: _number(SEED, metadata.get(SEED), integer=True),
            **{name: _number(name, metadata.get(name), integer=False) for name in PAPER_METADATA},
            METADATA_JSON: packed,
            EXAMPLE_KEY: key,
        }

    def _take(self, rows: list[dict]) -> None:
        self._rows += rows
        self._keys.update(row[EXAMPLE_KEY] for row in rows)
        self._buffered_bytes += sum(
            len(row["input_image"]["bytes"]) + len(row["edited_image"]["bytes"]) for row in rows
        )

    def _flush_if_full(self) -> None:
        if len(self._rows) >= self.shard_rows or self._buffered_bytes >= self.shard_bytes:
            self.flush()

    def _encode(self, value, name: str) -> bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.verify()
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                raise IP2PError(
                    f"Image {name!r} is {len(data)} bytes Pillow cannot read ({exc}); pass an image."
                ) from exc
            return data
        image = as_image(value, name)
        buffer = io.BytesIO()
        if self.image_format == "jpg":
            image.convert("RGB").save(buffer, format="JPEG", quality=95)
        else:
            image.save(buffer, format="PNG")
        return buffer.getvalue()

    # -------------------------------------------------------------------------------- shards

    def _claim_shard(self) -> Path:
        """The next shard name no other writer has or holds (claimed by an ``O_EXCL`` file)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            number, self._next = self._next, self._next + 1
            name = f"{number:0{SHARD_DIGITS}d}.parquet"
            if claim(self.folder / f".{name}.claim"):
                if not (self.folder / name).exists():
                    return self.folder / name
                (self.folder / f".{name}.claim").unlink()  # finished by a writer that released its claim

    def flush(self) -> Path | None:
        """Write the buffered rows (and groups) as one shard now; returns it (``None`` when nothing was buffered)."""
        if not self._rows and not self._buffered_groups:
            return None
        pa = _pyarrow()
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        if self._buffered_groups:
            footer = {**self.schema.metadata, GROUPS_FOOTER: json.dumps(self._buffered_groups, ensure_ascii=False)}
            table = table.replace_schema_metadata(footer)
        try:
            path = self._claim_shard()
        except OSError as exc:  # even an empty claim file needs room
            raise cannot_write(self.folder, exc) from exc
        try:
            with atomic_file(path) as tmp:
                if table.num_rows:
                    pa.parquet.write_table(table, tmp, row_group_size=self.row_group_rows)
                else:  # groups of no rows: a shard of no row group, as `datasets` refuses an empty one
                    pa.parquet.ParquetWriter(tmp, table.schema).close()
        except OSError as exc:
            raise cannot_write(path, exc) from exc
        finally:
            (path.parent / f".{path.name}.claim").unlink(missing_ok=True)
        self.written.append(path)
        self._rows.clear()
        self._buffered_bytes = 0
        self._buffered_groups.clear()
        return path

    def close(self) -> list[Path]:
        """Write the last shard; returns every shard this writer wrote."""
        self.flush()
        return list(self.written)

    def __enter__(self) -> ParquetLayoutWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None or issubclass(kind, KeyboardInterrupt):
            self.close()

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
- ``seed`` (int64) and ``p2p_threshold``, ``cfg_scale``, ``clip_sim_0``, ``clip_sim_1``,
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
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from ..errors import IP2PError
from ..formats.atomic import atomic_file
from .fields import EXAMPLE_KEY, INPUT_CAPTION, METADATA_JSON, OUTPUT_CAPTION, PAPER_METADATA, SEED
from .locks import claim
from .paper import IMAGE_FORMATS, as_image, check_prompt
from .parquet import _pyarrow, find_parquet_files  # one place says how to install pyarrow

SHARD_DIGITS = 5
_SHARD = re.compile(r"^(\d+)\.parquet$")
_CLAIM = re.compile(r"^\.(\d+)\.parquet\.claim$")
_SPLIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COLUMNS = ("input_image", "edit_prompt", "edited_image", INPUT_CAPTION, OUTPUT_CAPTION, SEED, *PAPER_METADATA)
COLUMNS = (*_COLUMNS, METADATA_JSON, EXAMPLE_KEY)  # the shards' columns, in order


def schema():
    """The shards' arrow schema, with the ``huggingface`` features JSON that ``datasets`` decodes images by."""
    pa = _pyarrow()
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    types = {"input_image": image, "edited_image": image, SEED: pa.int64()}
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
        return int(value)
    return float(value)


class ParquetLayoutWriter:
    """Adds examples to a parquet dataset at ``root`` (created if missing); see the module docstring.

    Use it as a context manager (or call :meth:`close`): rows are written a shard at a time, and
    the last, partial shard when the block ends normally or by Ctrl-C (any other error discards
    the unwritten rows; a rerun writes them). ``image_format``: ``"png"`` (lossless) or ``"jpg"``
    (quality 95) for images given as pixels; encoded bytes are stored as given. A shard holds at
    most ``shard_rows`` rows or about ``shard_bytes`` of images, in row groups of ``row_group_rows``.
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
        self._keys, self._next = self._read_existing()

    # -------------------------------------------------------------------------------- resume

    def _read_existing(self) -> tuple[set[str], int]:
        """The keys already written and the first shard number worth trying; foreign files refused."""
        pa = _pyarrow()
        keys: set[str] = set()
        numbers = [-1]
        if not self.root.is_dir():
            return keys, 0
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
            numbers.append(int(match.group(1)))
        if self.folder.is_dir():
            numbers += [int(m.group(1)) for m in map(_CLAIM.match, os.listdir(self.folder)) if m]
        return keys, max(numbers) + 1

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
        if not isinstance(key, str) or not key:
            raise IP2PError(f"An example key must be a non-empty string (got {key!r}).")
        if key in self._keys:
            return False
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
        row = {
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
        self._rows.append(row)
        self._keys.add(key)
        self._buffered_bytes += len(images[0]) + len(images[1])
        if len(self._rows) >= self.shard_rows or self._buffered_bytes >= self.shard_bytes:
            self.flush()
        return True

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
        """Write the buffered rows as one shard now; returns it (``None`` when nothing was buffered)."""
        if not self._rows:
            return None
        pa = _pyarrow()
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        path = self._claim_shard()
        try:
            with atomic_file(path) as tmp:
                pa.parquet.write_table(table, tmp, row_group_size=self.row_group_rows)
        except OSError as exc:
            raise IP2PError(
                f"Cannot write the shard {path}: {exc.strerror or exc}. Free disk space (or choose another "
                f"folder) and run again: the shards already written are kept and their examples skipped."
            ) from exc
        finally:
            (path.parent / f".{path.name}.claim").unlink(missing_ok=True)
        self.written.append(path)
        self._rows.clear()
        self._buffered_bytes = 0
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

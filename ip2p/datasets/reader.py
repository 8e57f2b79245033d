"""The one dataset reader: :func:`open_dataset` turns a path into an :class:`EditDataset`.

Layouts, detected from what is on disk:

- **paper** — the InstructPix2Pix folders: ``NNNNNNN/prompt.json`` (``caption`` or ``input``,
  ``edit``, ``output``), ``{seed}_0.{jpg,png,webp}`` / ``{seed}_1.…`` pairs, optional
  ``metadata.jsonl`` per folder and a root ``seeds.json`` that, when present, lists exactly which
  pairs belong to the dataset (:mod:`.paper_reader`);
- **parquet** — Hugging Face parquet: one ``.parquet`` file or a folder of shards (``*.parquet``,
  ``data/train-*.parquet`` as the hub lays them out), columns ``input_image``, ``edit_prompt``,
  ``edited_image`` unless ``columns`` maps them (:mod:`.parquet`);
- **magicbrush** — parquet (or arrow) with MagicBrush's columns ``img_id``, ``turn_index``,
  ``source_img``, ``mask_img``, ``instruction``, ``target_img``, recognised by them: one example
  per turn, keyed ``{img_id}-{turn_index}``, the turns in ``dataset.turns`` (:mod:`.parquet`);
- **arrow** — a ``datasets`` ``save_to_disk`` folder (``dataset_info.json``, ``state.json``,
  ``*.arrow`` IPC streams), or a ``DatasetDict`` folder of splits (:mod:`.parquet`).

Bad rows, and when they are found:

- At open time, always (cheap): missing files, a missing or unreadable ``prompt.json``, an empty
  instruction. They are counted by reason in ``dataset.skipped`` and summarised in one warning.
- At open time when ``verify_images`` (default: on for the paper layout, where it reads two image
  headers per pair and decodes no pixels; off for parquet/arrow, where it would read every image's
  bytes once): an image Pillow cannot identify, input and edited sizes that differ.
- Otherwise, and for damage only decoding reveals (a truncated file), ``dataset[i]`` raises
  :class:`BadExampleError` with ``.reason`` and ``.key``: the trainer catches it, counts it and
  draws another example. It is an :class:`~ip2p.errors.IP2PError`, so left uncaught it still
  reaches the user as one line.

Order is deterministic: paper pairs sorted by folder then seed, tabular rows by shard path then
row. Keys are stable: ``"0000123/4567"`` (folder/seed), ``"data/train-00000-of-00002:17"``
(shard path without suffix, row within the shard) or ``"27398-2"`` (MagicBrush's img_id-turn_index).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import IP2PError
from .rows import DEFAULT_COLUMNS, LAYOUTS_HELP, BadExampleError, EditDataset, resolve_columns

__all__ = ["BadExampleError", "EditDataset", "open_dataset", "resolve_columns"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ entry


def open_dataset(
    path: str | os.PathLike,
    *,
    columns: Mapping[str, str] | None = None,
    split: str | None = None,
    verify_images: bool | None = None,
) -> EditDataset:
    """Open an instruction-editing dataset in any supported layout (see the module docstring).

    ``columns`` maps roles to column names for parquet/arrow (``{"edit_prompt": "instruction"}``;
    roles not given keep their defaults); ``split`` picks the split of a hub-style parquet folder
    (``train-*.parquet``, ``train/*.parquet``) or of a ``DatasetDict`` folder (default: ``train``
    when there are several). ``verify_images``: check image headers and pair sizes at open time
    (``None``: on for the paper layout, off for parquet/arrow). Raises :class:`IP2PError` for a
    path that is missing, a layout it does not know, a missing column or zero usable rows.
    """
    root = Path(path).expanduser()
    mapping = resolve_columns(columns)
    if not root.exists():
        raise IP2PError(f"Dataset not found: {root} does not exist. Give {LAYOUTS_HELP}.")

    from . import paper_reader, parquet

    if root.is_file():
        suffix = root.suffix.lower()
        if suffix == ".parquet":
            return parquet.open_parquet(root, mapping, split=split, verify_images=bool(verify_images))
        if suffix == ".arrow":
            return parquet.open_arrow(root, mapping, split=split, verify_images=bool(verify_images))
        raise IP2PError(f"{root} is a {suffix or 'suffix-less'} file, not a dataset. Give {LAYOUTS_HELP}.")

    if parquet.is_arrow_folder(root):
        return parquet.open_arrow(root, mapping, split=split, verify_images=bool(verify_images))
    if paper_reader.is_paper_layout(root):
        if mapping != DEFAULT_COLUMNS or split is not None:
            logger.warning(
                "%s is in the paper's folder layout: the column mapping and split apply only to "
                "parquet/arrow datasets and are ignored here.",
                root,
            )
        return paper_reader.open_paper(root, verify_images=True if verify_images is None else verify_images)
    if parquet.find_parquet_files(root):
        return parquet.open_parquet(root, mapping, split=split, verify_images=bool(verify_images))
    raise IP2PError(
        f"{root} is not a dataset layout this reader knows: found no prompt folders with prompt.json and "
        f"{{seed}}_0/{{seed}}_1 image pairs, no seeds.json, no parquet files and no dataset_info.json/state.json. "
        f"Give {LAYOUTS_HELP}."
    )

"""Atomic writes: a file or folder appears whole under its name, or not at all.

Everything the toolkit writes (checkpoints, model folders, images, tokenizer caches, later dataset
shards) goes through here, so an interrupted run never leaves a half-written output, and the
result gets the permissions the user's umask asks for (temporary files are created private).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it replaces ``dst``, on error it is removed."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst``; on success it takes ``dst``'s place.

    An older ``dst`` is replaced, or kept when ``keep_existing`` (for caches that concurrent
    processes fill with the same content: the first to finish wins).
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if dst.exists():
            if keep_existing:
                return
            backup = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
            backup.rmdir()
            os.replace(dst, backup)
            os.replace(tmp, dst)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

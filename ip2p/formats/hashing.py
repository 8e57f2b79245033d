"""Model hashes: sha256 of a model's weight files, the identity recorded in every edit's metadata.

Hashing gigabytes takes seconds, so a hash is remembered in the cache while every file keeps its
size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import IP2PError
from .cache import read_json, update_json
from .checkpoint import WEIGHT_SUFFIXES, require_exists

_HASH_CHUNK = 8 * 1024 * 1024
_HASH_CACHE = "model_hashes.json"  # in the cache dir: weight-file identity -> hash


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The weight files a model hash covers: the file itself, or a folder's weight files sorted by relative path."""
    path = Path(path)
    require_exists(path)
    if path.is_file():
        return [path]
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES]
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            yield chunk


def model_hash(path: str | os.PathLike) -> str:
    """sha256 of the weights (a file, or a folder's weight files in sorted order), first 12 hex digits."""
    files = weight_files(path)
    if not files:
        raise IP2PError(
            f"{path} holds no weight files ({', '.join(WEIGHT_SUFFIXES)}), so there is no model to hash. "
            f"Check that the model was saved completely."
        )
    identity = json.dumps([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    key = hashlib.sha256(identity.encode()).hexdigest()
    cached = read_json(_HASH_CACHE).get(key)
    if isinstance(cached, str):
        return cached
    digest = hashlib.sha256()
    for file in files:
        for chunk in _chunks(file):
            digest.update(chunk)
    result = digest.hexdigest()[:12]
    update_json(_HASH_CACHE, key, result)
    return result

"""Where the toolkit keeps what it derives once and reuses (tokenizer files, model hashes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import atomic_file

ENV_CACHE = "IP2P_CACHE_DIR"


def cache_dir() -> Path:
    """``IP2P_CACHE_DIR``, else ``$XDG_CACHE_HOME/ip2p`` (``~/.cache/ip2p``)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "ip2p"


def read_json(name: str) -> dict:
    """A cached JSON object ({} when absent or unreadable: a cache is never needed for correctness)."""
    try:
        data = json.loads((cache_dir() / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_json(name: str, key: str, value: object) -> None:
    """Set one entry of a cached JSON object, atomically; an unwritable cache is skipped."""
    data = read_json(name)
    data[key] = value
    try:
        with atomic_file(cache_dir() / name) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    except OSError:
        pass

"""Settings for every suite: derived files go to a per-run cache, never the user's."""

from __future__ import annotations

import os
import tempfile


def pytest_configure(config) -> None:
    os.environ.setdefault("IP2P_CACHE_DIR", tempfile.mkdtemp(prefix="ip2p-test-cache-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub from any test

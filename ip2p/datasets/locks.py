"""Coordination between processes writing one dataset: exclusive claims and short-held locks.

- :func:`claim` creates a file with ``O_CREAT | O_EXCL``: of several processes asking for the same
  name, exactly one gets it (the parquet writer claims shard numbers this way).
- :func:`exclusive` holds an advisory lock on a lock file for a block (``flock`` on POSIX,
  ``msvcrt.locking`` on Windows). The operating system drops it when the process dies, so a
  crashed writer never leaves a stale lock behind. Lock files stay on disk (removing one while
  another process waits on it would break the exclusion); they are hidden (``.name``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fd: int) -> None:
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # gives up after ~10 s of waiting: wait again
                return
            except OSError:
                continue

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def claim(path: str | os.PathLike) -> bool:
    """Create ``path`` (empty) and return True, or return False when it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    os.close(fd)
    return True


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the lock file ``path`` (created if missing) while the block runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _lock(fd)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)

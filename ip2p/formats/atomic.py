"""Atomic writes: a file or folder appears whole under its name, or not at all.

Everything the toolkit writes (checkpoints, model folders, images, tokenizer caches, later dataset
shards) goes through here, so an interrupted run never leaves a half-written output, and the
result gets the permissions the user's umask asks for (temporary files are created private).

Interruptions: while :func:`interrupts_unwind` is active (the ``ip2p`` command line installs it),
SIGINT raises :class:`KeyboardInterrupt` and SIGTERM :class:`Terminated` in the main thread, so
the ``finally:`` blocks here remove every temporary file and folder. A signal that arrives while a
temporary name is being created, a finished result is being moved into place or a temporary is
being removed waits until that step is done, so a finished output is never lost half-way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import IP2PError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup on the way out runs (never caught by ``except Exception``)."""


_critical = 0  # how many steps that must not be cut short are running
_pending: list[int] = []  # signals that arrived during such a step


def _exception_for(signum: int) -> KeyboardInterrupt:
    return Terminated("terminated") if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum: int, frame: object) -> None:
    if _critical:
        _pending.append(signum)
        return
    raise _exception_for(signum)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold SIGINT/SIGTERM (when :func:`interrupts_unwind` is active) until the block is done."""
    global _critical
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
        if not _critical and _pending:
            signum = _pending[0]
            _pending.clear()
            raise _exception_for(signum)


@contextlib.contextmanager
def interrupts_unwind() -> Iterator[None]:
    """While active, SIGINT raises ``KeyboardInterrupt`` and SIGTERM :class:`Terminated`.

    Only in the main thread (where Python runs signal handlers); a signal the process ignores
    stays ignored. The previous handlers come back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    installed = [signum for signum, handler in previous.items() if handler is not signal.SIG_IGN]
    for signum in installed:
        signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum in installed:
            handler = previous[signum]
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unwritable(dst: Path, exc: OSError | None = None, reason: str = "") -> IP2PError:
    why = reason
    if not why and exc is not None:
        why = exc.strerror or type(exc).__name__
    return IP2PError(
        f"Cannot write {dst}: {why}. Choose an output path in a folder you can write to "
        f"(its parent must be a folder, not a file, and the disk must have space)."
    )


def require_writable(dst: str | os.PathLike) -> None:
    """Raise :class:`IP2PError` naming ``dst`` now if a file could not be written there later.

    Creates nothing that stays: the parent folder, or when it does not exist yet its nearest
    existing ancestor (where it will be created), is probed with a temporary file.
    """
    dst = Path(dst)
    if dst.is_dir():
        raise _unwritable(dst, reason="it is a folder")
    existing = dst.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _unwritable(dst, reason=f"{existing} is a file, so no folder can be created inside it")
    try:
        with _uninterrupted():
            handle, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=existing)
            os.close(handle)
            os.unlink(name)
    except OSError as exc:
        raise _unwritable(dst, exc) from exc


def _make_parent(dst: Path) -> None:
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(dst, exc) from exc


def _about(exc: OSError, tmp: Path) -> bool:
    """Whether an error from the body concerns the temporary path (or something inside it)."""
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    return any(os.fspath(n) == str(tmp) or os.fspath(n).startswith(str(tmp) + os.sep) for n in names)


@contextlib.contextmanager
def _named_for(dst: Path, tmp: Path) -> Iterator[None]:
    """A write error about the temporary ``tmp`` re-raised as one naming the user's ``dst``."""
    try:
        yield
    except OSError as exc:
        if _about(exc, tmp):
            raise _unwritable(dst, exc) from exc
        raise


@contextlib.contextmanager
def atomic_file(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it replaces ``dst``, on error it is removed.

    Failures to write name ``dst`` (never the temporary name) in an :class:`IP2PError`.
    """
    dst = Path(dst)
    _make_parent(dst)
    tmp: Path | None = None
    try:
        with _uninterrupted():  # a signal must not strike between creating the file and knowing its name
            try:
                handle, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
            except OSError as exc:
                raise _unwritable(dst, exc) from exc
            os.close(handle)
            tmp = Path(name)
        with _named_for(dst, tmp):
            yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with _uninterrupted():
            try:
                os.replace(tmp, dst)
            except OSError as exc:
                raise _unwritable(dst, exc) from exc
    finally:
        if tmp is not None:
            with _uninterrupted():
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst``; on success it takes ``dst``'s place.

    An older ``dst`` is replaced, or kept when ``keep_existing`` (for caches that concurrent
    processes fill with the same content: the first to finish wins). The swap of an older ``dst``
    is never cut short by a signal: ``dst`` is the old folder or the new one, always.
    """
    dst = Path(dst)
    _make_parent(dst)
    tmp: Path | None = None
    try:
        with _uninterrupted():
            try:
                tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
            except OSError as exc:
                raise _unwritable(dst, exc) from exc
        with _named_for(dst, tmp):
            yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        with _uninterrupted():
            if dst.exists():
                if keep_existing:
                    return
                backup = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
                backup.rmdir()
                os.replace(dst, backup)
                try:
                    os.replace(tmp, dst)
                except OSError as exc:
                    os.replace(backup, dst)  # the old folder goes back where it was
                    raise _unwritable(dst, exc) from exc
                shutil.rmtree(backup, ignore_errors=True)
            else:
                os.replace(tmp, dst)
    finally:
        if tmp is not None:
            with _uninterrupted():
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)

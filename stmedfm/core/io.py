"""Atomic file writes: a reader, or a rerun after a crash, sees the old file or the new one, never half of one.

Every file the project writes (results, checkpoints, figures, manifests, caches) goes through
:func:`atomic_path`: a temporary file beside the target, renamed over it only once complete, with the
permissions an ordinary ``open()`` would give (not ``mkstemp``'s 0600). A write that fails (``EFBIG`` under
``ulimit -f``, ``ENOSPC``, ``EACCES``, a read-only folder) leaves the old file in place and raises
:class:`WriteFailed`, an ``OSError`` naming the target (not the temporary file), which the command line prints as
one line: the store is intact and the same command resumes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class WriteFailed(OSError):
    """An atomic write that did not happen: ``filename`` is the target, which still holds its previous content."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any failure it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(fd)
    except OSError as exc:
        raise WriteFailed(exc.errno, exc.strerror, str(path)) from exc
    try:
        yield Path(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailed) and exc.errno is not None:
            raise WriteFailed(exc.errno, exc.strerror, str(path)) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, blob: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)


def atomic_write_csv(path: str | os.PathLike, frame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


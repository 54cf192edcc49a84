"""Atomic file writes: the one helper every writer of the bundle (and of the corx client) goes through."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``target`` (same suffixes); when the block succeeds it is moved onto
    ``target`` (``os.replace``), when it fails it is removed: no partial file ever carries the final name."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}-", suffix=".tmp" + "".join(target.suffixes),
                                dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files: give results the usual permissions
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)

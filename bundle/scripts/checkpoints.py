"""Finding the checkpoint a training run resumes from."""

from __future__ import annotations

import os
from pathlib import Path


def latest_checkpoint(ckpt_dir: str | os.PathLike, pattern: str = "checkpoint_*.pt") -> str | None:
    """Newest file matching ``pattern`` in ``ckpt_dir`` (by modification time), or None if there is none."""
    candidates = sorted(Path(ckpt_dir).glob(pattern), key=lambda p: p.stat().st_mtime)
    return str(candidates[-1]) if candidates else None

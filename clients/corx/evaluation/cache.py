"""On-disk cache of per-pair results, so tables can be rebuilt and extended and long runs resume.

Layout under ``DIR/cache/<method>/``:

- ``<key>.field.npz``: the method's field on the network grid (int16 with a 0.001-voxel step, float32 when any
  |u| > 32 voxels) and its run information (seconds, ...), as JSON text. ``key`` = SHA-256 of the method's name
  and settings (Elastix parameters, weights file size/mtime or "untrained" + seed), the preprocessing config and
  the SHA-1 of the four input images' bytes, so changing any of them makes a new entry;
- ``<key>.metrics-<version>.json``: the metrics computed from that field (recomputed without rerunning the method
  when the metric code's version changes).

Every file is written to a temporary name in the same folder and moved into place (``os.replace``): a killed run
leaves finished pairs intact and no partial file under a final name. Metrics are always computed from the stored
(quantised) field, so a rerun from the cache gives the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..io.imageio import atomic_path

FIELD_STEP = 1e-3  # voxels
_HASHES: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-1 of a file's bytes (memoised per path, size and mtime within this process)."""
    p = Path(path)
    st = p.stat()
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _HASHES:
        h = hashlib.sha1()
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _HASHES[memo] = h.hexdigest()
    return _HASHES[memo]


def make_key(*parts: Any) -> str:
    """A stable hex key of JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def quantise(field: np.ndarray) -> np.ndarray:
    """The field as it is stored (int16, 0.001-voxel step) and read back; float32 when out of int16 range."""
    u = np.asarray(field, dtype=np.float32)
    if np.abs(u).max(initial=0.0) >= 32.0:
        return u.copy()
    return (np.rint(u / FIELD_STEP).astype(np.int16).astype(np.float32) * np.float32(FIELD_STEP))


def _atomic_write(target: Path, write: Any) -> None:
    with atomic_path(target, overwrite=True) as tmp:
        write(tmp)


class ResultCache:
    """Fields and metric records per (method, key) under ``root``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def _path(self, method: str, key: str, kind: str) -> Path:
        return self.root / method / f"{key}.{kind}"

    def load_field(self, method: str, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """(field float32, info) or None when absent or unreadable."""
        path = self._path(method, key, "field.npz")
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if "field_q" in z:
                    field = z["field_q"].astype(np.float32) * np.float32(float(z["step"]))
                else:
                    field = z["field"].astype(np.float32)
                info = json.loads(str(z["info"]))
        except (OSError, ValueError, KeyError):
            return None
        return field, info

    def save_field(self, method: str, key: str, field: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """Store the field; returns it as stored (see :func:`quantise`)."""
        u = np.asarray(field, dtype=np.float32)
        arrays: dict[str, Any] = {"info": np.array(json.dumps(info, default=float))}
        if np.abs(u).max(initial=0.0) < 32.0:
            arrays["field_q"] = np.rint(u / FIELD_STEP).astype(np.int16)
            arrays["step"] = np.array(FIELD_STEP)
        else:
            arrays["field"] = u

        def write(tmp: Path) -> None:
            with tmp.open("wb") as fh:
                np.savez_compressed(fh, **arrays)

        _atomic_write(self._path(method, key, "field.npz"), write)
        return quantise(u)

    def load_json(self, method: str, key: str, kind: str) -> dict[str, Any] | None:
        path = self._path(method, key, f"{kind}.json")
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def save_json(self, method: str, key: str, kind: str, record: dict[str, Any]) -> None:
        text = json.dumps(record, indent=1, default=float, allow_nan=True)
        _atomic_write(self._path(method, key, f"{kind}.json"), lambda tmp: tmp.write_text(text))

"""Writing: NIfTI images with proper headers, JSON files, atomic patient folders."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..atomic import atomic_path
from .spec import FIELD_SCALE


def nifti(data: np.ndarray, affine: np.ndarray, slope: float | None = None) -> nib.Nifti1Image:
    """A NIfTI-1 image with scanner-space qform/sform and mm units; ``slope`` sets scl_slope of int data."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    return img


def field_image(field: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A displacement field (3, *spatial) in voxels -> NIfTI (*spatial, 3) int16 with scl_slope FIELD_SCALE."""
    q = np.rint(np.moveaxis(field, 0, -1) / FIELD_SCALE)
    if np.abs(q).max(initial=0) > 32767:
        raise ValueError(f"displacement of {np.abs(field).max():.1f} voxels does not fit int16 storage")
    return nifti(q.astype(np.int16), affine, slope=FIELD_SCALE)


def write_json(path: Path, obj: Any) -> None:
    """JSON, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


class AsyncSaver:
    """Saves images on a worker thread (gzip releases the GIL), so compression overlaps computation."""

    def __init__(self, workers: int = 1) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.futures: list[Future] = []

    def save(self, img: nib.Nifti1Image, path: Path) -> None:
        self.futures.append(self.pool.submit(nib.save, img, str(path)))

    def wait(self) -> None:
        try:
            for f in self.futures:
                f.result()
        finally:
            self.futures.clear()
            self.pool.shutdown(wait=True)


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; on success it replaces ``final`` (os.replace)."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final}: exists and is not a folder")
    if is_nonempty_dir(final) and not overwrite:
        raise FileExistsError(f"{final}: patient folder exists and is not empty "
                              "(use overwrite=True or --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if is_nonempty_dir(final):
            trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

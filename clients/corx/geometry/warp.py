"""Apply a displacement field (corx convention) to an image with numpy/scipy: warped(p) = moving(p + u(p)).

``u`` is (3, X, Y, Z) in memory, in voxels of the fixed grid, channels in array-axis order (i, j, k); NIfTI
stores it as (X, Y, Z, 3). Sampling is trilinear; points outside the moving image take the nearest border value
(MONAI ``Warp(padding_mode="border")``). The moving image must be on the same grid as the field (all SPECT of a
patient share one grid).
"""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from ..errors import CorxError
from ..io.imageio import read_array


def field_from_nifti(data: np.ndarray, where: str = "field") -> np.ndarray:
    """(X, Y, Z, 3) NIfTI field data (possibly (X, Y, Z, 1, 3)) -> (3, X, Y, Z) float32."""
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim == 5 and arr.shape[3] == 1:
        arr = arr[:, :, :, 0, :]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise CorxError(f"{where}: expected a displacement field of shape (X, Y, Z, 3), got {arr.shape}")
    return np.ascontiguousarray(np.moveaxis(arr, -1, 0))


def field_to_nifti(u: np.ndarray) -> np.ndarray:
    """(3, X, Y, Z) -> (X, Y, Z, 3) for writing."""
    return np.moveaxis(np.asarray(u), 0, -1)


def load_field(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a field NIfTI; returns ((3, X, Y, Z) float32, affine)."""
    data, affine = read_array(path, dtype=np.float32)
    return field_from_nifti(data, str(path)), affine


def warp_image(moving: np.ndarray, u: np.ndarray, order: int = 1) -> np.ndarray:
    """Pull-back warp: out[p] = moving[p + u[:, p]] (trilinear for order=1, border padding)."""
    moving = np.asarray(moving)
    u = np.asarray(u, dtype=np.float32)
    if moving.ndim != 3:
        raise CorxError(f"moving image must be 3-D, got shape {moving.shape}")
    if u.shape != (3, *moving.shape):
        raise CorxError(f"field shape {u.shape} does not match the moving image {moving.shape} "
                        f"(expected (3, {', '.join(map(str, moving.shape))}))")
    grid = np.indices(moving.shape, dtype=np.float32)
    grid += u
    src = np.ascontiguousarray(moving, dtype=np.float32 if order else None)  # C order: points read nearby memory
    return ndimage.map_coordinates(src, grid, order=order, mode="nearest", prefilter=False)

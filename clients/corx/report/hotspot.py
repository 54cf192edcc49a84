"""The point the line profiles and crosshairs go through: by default the hottest tumour-like spot.

With a label map holding tumour labels (>= 11, docs/CONVENTIONS.md): the hottest (lightly smoothed) reference
SPECT voxel inside a tumour. Otherwise the strongest compact hot spot: the maximum of a difference of Gaussians
(6 mm minus 18 mm, which favours blobs of about 1-4 cm over large organs) outside the lowest 35 % of the
superior-inferior extent (where the bladder dominates).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from ..errors import CorxError

FIRST_TUMOUR_LABEL = 11
DOG_SIGMAS_MM = (6.0, 18.0)
PELVIS_FRACTION = 0.35


def hot_spot(spect: np.ndarray, affine: np.ndarray,
             labels: np.ndarray | None = None) -> tuple[tuple[int, int, int], str]:
    """(voxel index, how it was found) of the hottest tumour-like spot of ``spect``."""
    spacing = voxel_sizes(affine)
    if labels is not None and labels.shape == spect.shape and np.any(labels >= FIRST_TUMOUR_LABEL):
        smooth = ndimage.gaussian_filter(spect.astype(np.float32), 2.0 / spacing.clip(min=1e-6))
        masked = np.where(labels >= FIRST_TUMOUR_LABEL, smooth, -np.inf)
        idx = np.unravel_index(int(np.argmax(masked)), spect.shape)
        return (int(idx[0]), int(idx[1]), int(idx[2])), f"hottest tumour voxel (label {int(labels[idx])})"
    data = spect.astype(np.float32)
    dog = (ndimage.gaussian_filter(data, DOG_SIGMAS_MM[0] / spacing)
           - ndimage.gaussian_filter(data, DOG_SIGMAS_MM[1] / spacing))
    axis = int(np.argmax(np.abs(np.asarray(affine)[2, :3])))
    n = spect.shape[axis]
    cut = int(PELVIS_FRACTION * n)
    index: list[slice] = [slice(None)] * 3
    index[axis] = slice(0, cut) if affine[2, axis] > 0 else slice(n - cut, n)
    dog[tuple(index)] = -np.inf
    idx = np.unravel_index(int(np.argmax(dog)), spect.shape)
    return (int(idx[0]), int(idx[1]), int(idx[2])), "strongest compact hot spot (difference of Gaussians)"


def parse_point(point: object, shape: Sequence[int]) -> tuple[int, int, int]:
    """A user point "i,j,k" (string, or a sequence from the command line) as voxel indices inside ``shape``."""
    if isinstance(point, str):
        parts: Sequence[object] = [p for p in point.replace(" ", "").split(",") if p]
    elif isinstance(point, (list, tuple)):
        parts = point
    else:
        raise CorxError(f"--point must be 'i,j,k' voxel indices of the reference SPECT, got {point!r}")
    try:
        idx = tuple(int(p) for p in parts)  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise CorxError(f"--point must be 'i,j,k' voxel indices of the reference SPECT, got {point!r}") from exc
    if len(idx) != 3 or any(not 0 <= v < n for v, n in zip(idx, shape, strict=False)):
        raise CorxError(f"--point {point!r} is not a voxel of the reference SPECT grid {tuple(shape)}")
    return idx[0], idx[1], idx[2]

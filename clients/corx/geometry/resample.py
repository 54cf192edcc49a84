"""Resampling between NIfTI grids in world (mm) space, numpy/scipy only."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def resample_to_grid(data: np.ndarray, affine: np.ndarray, target_shape: tuple[int, ...],
                     target_affine: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Sample ``data`` (on ``affine``) at the voxel centres of the target grid.

    ``order`` 0 is nearest neighbour (labels), 1 trilinear. Points outside the source get ``cval``.
    """
    # target voxel -> world -> source voxel is one affine map: src = inv(A) @ T @ idx
    mapping = np.linalg.inv(affine) @ np.asarray(target_affine, dtype=np.float64)
    matrix, offset = mapping[:3, :3], mapping[:3, 3]
    out = ndimage.affine_transform(np.asarray(data, dtype=np.float32 if order else data.dtype),
                                   matrix, offset=offset, output_shape=tuple(target_shape[:3]),
                                   order=order, mode="constant", cval=cval, prefilter=False)
    return out

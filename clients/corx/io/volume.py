"""A 3-D image with its voxel -> world (RAS mm) affine, and reading one from NIfTI."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import CorxError
from .imageio import read_array


@dataclass(frozen=True)
class Volume:
    """A 3-D image and its voxel -> world (RAS mm) affine."""

    data: np.ndarray
    affine: np.ndarray


def load_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI file as a float32 :class:`Volume` (scaling applied)."""
    data, affine = read_array(path, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CorxError(f"{path}: expected a 3-D image, got shape {data.shape}")
    return Volume(data, affine)

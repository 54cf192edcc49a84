"""Masks of label maps (the VOIs' voxels)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: up to this many labels a mask is made by comparisons; beyond, by np.isin
FEW_LABELS = 8


def label_mask(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """Boolean mask of the voxels whose label is one of ``values`` (what ``np.isin`` gives).

    A VOI has one or a few labels: one comparison per label is 0.4-1.6 ms on a 128^3 map, where ``np.isin``
    takes 12-15 ms (it sorts); the pipeline makes about 60 such masks per patient.
    """
    wanted = [int(v) for v in values]
    if len(wanted) > FEW_LABELS:
        return np.isin(labels, wanted)
    mask = np.zeros(np.shape(labels), dtype=bool)
    for value in wanted:
        mask |= labels == value
    return mask

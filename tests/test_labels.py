"""Label-map masks: the same voxels as np.isin, by comparisons for a VOI's few labels."""

from __future__ import annotations

import numpy as np
import pytest

from corx.io.labels import FEW_LABELS, label_mask


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32])
@pytest.mark.parametrize("values", [[], [3], [4, 5], [0, 7], [np.int64(2), 9, 250], list(range(1, FEW_LABELS + 3))])
def test_label_mask_is_isin(dtype: type, values: list[int]) -> None:
    labels = np.random.default_rng(7).integers(0, 12, (9, 8, 7)).astype(dtype)
    labels[0, 0, :3] = [250, 9, 2]
    got = label_mask(labels, values)
    assert got.dtype == bool and got.shape == labels.shape
    np.testing.assert_array_equal(got, np.isin(labels, values))

"""The separable trilinear path of affine_resample against scipy's general path."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from corx.geometry.resample import SEPARABLE_MODES, affine_resample, separable_linear


def _scipy(data: np.ndarray, mapping: np.ndarray, shape: tuple[int, int, int], mode: str, cval: float) -> np.ndarray:
    return ndimage.affine_transform(data, mapping[:3, :3], offset=mapping[:3, 3], output_shape=shape, order=1,
                                    mode=mode, cval=cval, prefilter=False)


MAPPINGS = {
    "shrink and shift": np.array([[1.98, 0, 0, 3.7], [0, 1.98, 0, -1.2], [0, 0, 1.29, 0.97], [0, 0, 0, 1.0]]),
    "grow, flipped": np.array([[-0.6, 0, 0, 17.0], [0, 0.45, 0, -0.8], [0, 0, -1.0, 14.0], [0, 0, 0, 1.0]]),
    "edges exactly": np.array([[1.0, 0, 0, 0.0], [0, 19 / 9, 0, 0.0], [0, 0, 0.5, 0.0], [0, 0, 0, 1.0]]),
    "half outside": np.array([[1.0, 0, 0, -9.5], [0, 1.0, 0, 12.25], [0, 0, 1.0, -3.0], [0, 0, 0, 1.0]]),
}


@pytest.mark.parametrize("mode", SEPARABLE_MODES)
@pytest.mark.parametrize("name", sorted(MAPPINGS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slab", [1 << 20, 300])
def test_separable_trilinear_equals_scipy(mode: str, name: str, dtype: type, slab: int,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """One slab or many (300 source elements: 1-2 slices per slab), the same values."""
    monkeypatch.setattr("corx.geometry.resample.SLAB_ELEMENTS", slab)
    rng = np.random.default_rng(3)
    data = (ndimage.gaussian_filter(rng.random((18, 20, 15)), 1.0) * 3000.0 - 1000.0).astype(dtype)
    shape = (19, 10, 29)
    cval = -1000.0 if mode != "nearest" else 0.0
    expected = _scipy(data, MAPPINGS[name], shape, mode, cval)
    got = separable_linear(data, MAPPINGS[name], shape, mode, cval)
    assert got.dtype == dtype and got.shape == shape and got.flags.c_contiguous
    tol = 2.5e-4 if dtype == np.float32 else 1e-9  # HU up to 2000: float32 rounding of the result
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
    if mode == "constant" and name == "half outside":
        assert np.sum(got == cval) > got.size // 4  # the outside points really are tested
    # affine_resample takes this path, also for a NIfTI's Fortran-ordered array
    np.testing.assert_allclose(affine_resample(np.asfortranarray(data), MAPPINGS[name], shape, 1, mode, cval),
                               expected, rtol=0, atol=tol)


def test_other_modes_and_orders_keep_scipy() -> None:
    data = np.random.default_rng(4).random((9, 8, 7)).astype(np.float32)
    mapping = MAPPINGS["grow, flipped"] * np.array([[0.5], [1], [0.5], [1]])
    for mode, order in (("reflect", 1), ("constant", 3), ("mirror", 1)):
        ref = ndimage.affine_transform(data, np.diag(mapping[:3, :3]), offset=mapping[:3, 3], output_shape=(5, 6, 7),
                                       order=order, mode=mode, prefilter=False)
        np.testing.assert_array_equal(affine_resample(data, mapping, (5, 6, 7), order, mode), ref)
    with pytest.raises(ValueError, match="mode 'wrap'"):
        separable_linear(data, mapping, (5, 6, 7), "wrap")

"""Absorbed dose by local energy deposition: constants, HU-to-density, air handling, DVH metrics."""

from __future__ import annotations

import numpy as np
import pytest

from corx.dosimetry.dose import body_mask, cumulative_dvh, density_on_grid, dose_from_ct, dose_from_tia, dvh_metrics
from corx.dosimetry.physics import DOSE_GY_G_PER_MBQH, SCHNEIDER_DENSITY, SCHNEIDER_HU, hu_to_density
from corx.errors import CorxError


def test_led_constant_from_mean_electron_energy() -> None:
    # 0.14792 MeV x 1.602e-13 J/MeV x 3.6e9 decays per MBq h / 1e-3 kg per g
    assert pytest.approx(0.08532, rel=1e-4) == DOSE_GY_G_PER_MBQH


def test_schneider_table_nodes_interpolation_and_clamping() -> None:
    np.testing.assert_allclose(hu_to_density(np.array(SCHNEIDER_HU)), SCHNEIDER_DENSITY, rtol=1e-6)
    assert hu_to_density(np.array([-2000.0, 5000.0])).tolist() == pytest.approx([0.00121, 2.8])
    assert hu_to_density(np.array([0.0]))[0] == pytest.approx(0.9305 + 97 / 111 * (1.03 - 0.9305), rel=1e-6)
    assert hu_to_density(np.array([850.5]))[0] == pytest.approx((1.0762 + 1.9642) / 2, rel=1e-6)
    hu = np.random.default_rng(0).uniform(-1100, 3100, (9, 7, 5)).astype(np.float32)
    fortran = hu_to_density(np.asfortranarray(hu))  # a NIfTI CT's layout: kept, same values voxel for voxel
    assert fortran.flags.f_contiguous and fortran.dtype == np.float32
    np.testing.assert_array_equal(fortran, hu_to_density(hu))
    np.testing.assert_allclose(hu_to_density(hu), np.interp(hu, SCHNEIDER_HU, SCHNEIDER_DENSITY), rtol=1e-6)


def test_whole_ct_numbers_by_table_equal_the_interpolation() -> None:
    rng = np.random.default_rng(1)
    whole = rng.integers(-1024, 3072, (20, 16, 12)).astype(np.int16)  # what a CT stores
    expected = np.interp(whole.astype(np.float64), SCHNEIDER_HU, SCHNEIDER_DENSITY).astype(np.float32)
    for hu in (whole, whole.astype(np.float32), np.asfortranarray(whole.astype(np.float32))):
        np.testing.assert_array_equal(hu_to_density(hu), expected)
    mixed = whole.astype(np.float32)
    mixed[3, 4, 5] = 10.25  # one fractional number: the whole array is interpolated
    expected[3, 4, 5] = np.float32(np.interp(10.25, SCHNEIDER_HU, SCHNEIDER_DENSITY))
    np.testing.assert_array_equal(hu_to_density(mixed), expected)
    wide = np.array([-2.0e9, 0.0, 3.0e9], np.float32)  # beyond int32 and any table: interpolated, clamped
    assert hu_to_density(wide).tolist() == pytest.approx([0.00121, 0.9305 + 97 / 111 * (1.03 - 0.9305), 2.8])
    assert np.isnan(hu_to_density(np.array([0.0, np.nan]))[1])


def test_uniform_tia_in_water_matches_hand_calculation() -> None:
    # 10 mL of water (1 g/mL) holding 250 MBq h: D = 0.08532 * 250 / 10 = 2.133 Gy in every voxel
    tia_per_ml = np.full((5, 4, 2), 250.0 / 10.0, np.float32)
    dose = dose_from_tia(tia_per_ml, np.ones_like(tia_per_ml))
    np.testing.assert_allclose(dose, 0.08532 * 250.0 / 10.0, rtol=1e-4)


def test_dose_from_ct_water_phantom_and_air() -> None:
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    ct_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    ct_aff[:3, 3] = -1.0  # CT voxel centres offset so that 2x2x2 CT voxels tile one SPECT voxel
    ct = np.zeros((24, 24, 24), np.float32)  # water-equivalent soft tissue, HU 0
    ct[:4] = -1000.0  # air slab: SPECT rows 0-1
    tia = np.full((12, 12, 12), 3.0, np.float32)  # MBq h/mL, also spilled into the air
    res = dose_from_ct(tia, aff, ct, ct_aff)
    rho = float(hu_to_density(np.array([0.0]))[0])
    assert res.density[6, 6, 6] == pytest.approx(rho, rel=1e-5)
    np.testing.assert_allclose(res.dose_gy[3:], 0.08532 * 3.0 / rho, rtol=1e-4)
    assert (res.dose_gy[:2] == 0).all() and not res.body[:2].any()
    assert res.dose_gy.max() < 1.01 * 0.08532 * 3.0 / rho  # no absurd air doses


def test_gas_inside_body_is_floored_not_absurd() -> None:
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    density = np.ones((8, 8, 8), np.float32)
    density[3:5, 3:5, 3:5] = 0.0012  # gas pocket enclosed by tissue
    body = body_mask(density, aff)
    assert body[3:5, 3:5, 3:5].all()
    dose = dose_from_tia(np.ones_like(density), density, body, min_density=0.1)
    assert dose[4, 4, 4] == pytest.approx(0.08532 / 0.1, rel=1e-4)


def test_density_is_averaged_over_the_spect_voxel() -> None:
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    ct_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    ct_aff[:3, 3] = -1.0
    ct = np.full((16, 16, 16), 1600.0, np.float32)  # bone, 1.9642 g/mL
    ct[::2] = 14.0  # every other CT plane soft tissue, 1.03 g/mL
    density = density_on_grid(ct, ct_aff, (8, 8, 8), aff)
    np.testing.assert_allclose(density[1:-1, 1:-1, 1:-1], (1.9642 + 1.03) / 2, rtol=1e-4)


def _point_by_point_mean(data: np.ndarray, mapping: np.ndarray, shape: tuple[int, int, int],
                         offsets: list[np.ndarray], cval: float) -> np.ndarray:
    """The reference: one trilinear resampling per sub-point (scipy "constant" mode), averaged."""
    from itertools import product

    from corx.geometry.resample import affine_resample

    acc = np.zeros(shape, np.float64)
    for sub in product(*offsets):
        shifted = mapping.copy()
        shifted[:3, 3] = mapping[:3, :3] @ np.asarray(sub) + mapping[:3, 3]
        acc += affine_resample(data, shifted, shape, order=1, mode="constant", cval=cval)
    return acc / np.prod([len(o) for o in offsets])


@pytest.mark.parametrize("fortran", [False, True])
def test_separable_sub_point_mean_equals_resampling_each_sub_point(fortran: bool) -> None:
    from corx.geometry.resample import sub_point_mean

    rng = np.random.default_rng(5)
    data = rng.normal(1.0, 0.4, (23, 19, 14)).astype(np.float32)
    data = np.asfortranarray(data) if fortran else data
    # scaled, flipped along y, shifted so that part of the output lies outside the source (cval there)
    mapping = np.array([[1.9, 0, 0, 0.7], [0, -2.3, 0, 20.2], [0, 0, 1.3, -2.6], [0, 0, 0, 1.0]])
    offsets = [(np.arange(s) + 0.5) / s - 0.5 for s in (2, 3, 1)]
    got = sub_point_mean(data, mapping, (13, 10, 14), offsets, cval=0.0012)
    want = _point_by_point_mean(np.ascontiguousarray(data), mapping, (13, 10, 14), offsets, 0.0012)
    assert got is not None and got.dtype == np.float32 and got.flags.c_contiguous
    assert np.any(np.isclose(want, 0.0012)) and np.any(~np.isclose(want, 0.0012))  # both parts are exercised
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_separable_sub_point_mean_declines_a_rotation() -> None:
    from corx.geometry.resample import sub_point_mean

    c, s = np.cos(0.2), np.sin(0.2)
    rotation = np.array([[c, -s, 0, 3.0], [s, c, 0, 1.0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    assert sub_point_mean(np.ones((6, 6, 6), np.float32), rotation, (4, 4, 4), [np.zeros(1)] * 3) is None


def test_density_of_an_oblique_ct_is_averaged_point_by_point() -> None:
    ct = np.random.default_rng(1).uniform(-900.0, 1500.0, (20, 20, 20)).astype(np.float32)
    c, s = np.cos(0.3), np.sin(0.3)
    ct_aff = np.array([[2 * c, -2 * s, 0, -5.0], [2 * s, 2 * c, 0, 2.0], [0, 0, 2.0, -3.0], [0, 0, 0, 1.0]])
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    density = density_on_grid(ct, ct_aff, (8, 8, 8), aff)
    mapping = np.linalg.inv(ct_aff) @ aff
    footprint = np.abs(mapping[:3, :3]).sum(axis=0)
    offsets = [(np.arange(k) + 0.5) / k - 0.5 for k in np.minimum(3, np.ceil(footprint - 1e-6)).astype(int)]
    want = _point_by_point_mean(hu_to_density(ct).astype(np.float32), mapping, (8, 8, 8), offsets,
                                float(hu_to_density(np.array([-1000.0]))[0]))
    np.testing.assert_allclose(density, want, rtol=1e-6, atol=1e-6)


def test_dvh_metrics() -> None:
    d = np.arange(1, 101, dtype=np.float64)
    m = dvh_metrics(d)
    assert m["mean_dose_gy"] == pytest.approx(50.5)
    assert m["d50_gy"] == pytest.approx(50.5)
    assert m["d2_gy"] == pytest.approx(np.percentile(d, 98))
    assert m["d98_gy"] == pytest.approx(np.percentile(d, 2))
    assert m["d2_gy"] > m["d50_gy"] > m["d98_gy"]
    assert m["dmax_gy"] == 100.0 and m["v23gy_pct"] == pytest.approx(78.0)  # 23..100 Gy: 78 of 100 voxels
    assert np.isnan(dvh_metrics(np.array([]))["mean_dose_gy"])


def test_cumulative_dvh_matches_counting() -> None:
    rng = np.random.default_rng(0)
    doses = {"kidneys": rng.gamma(4.0, 5.0, 5000), "tumour_1": np.full(10, 30.0)}
    bins, curves = cumulative_dvh(doses, n_bins=100)
    assert bins[0] == 0 and bins[-1] == pytest.approx(max(d.max() for d in doses.values()))
    for name, values in doses.items():
        assert curves[name][0] == 100.0  # every voxel receives >= 0 Gy
        assert np.all(np.diff(curves[name]) <= 0)  # cumulative: never increases with dose
        for i in (10, 37, 80):
            assert curves[name][i] == pytest.approx(100.0 * np.mean(values >= bins[i]))
    assert curves["tumour_1"][bins <= 30.0].min() == 100.0 and curves["tumour_1"][bins > 30.0].max() == 0.0


def test_dose_bad_inputs() -> None:
    tia = np.ones((3, 3, 3), np.float32)
    with pytest.raises(CorxError, match=r"dose mode 'mc' is not implemented \(available: led, dvk\)"):
        dose_from_tia(tia, tia, mode="mc")
    with pytest.raises(CorxError, match="needs the grid's voxel size"):
        dose_from_tia(tia, tia, mode="dvk")
    with pytest.raises(CorxError, match="density grid"):
        dose_from_tia(tia, tia[:2])
    with pytest.raises(CorxError, match="min_density"):
        dose_from_tia(tia, tia, min_density=0.0)


@pytest.mark.parametrize(("image_shape", "kernel_shape"), [((20, 17, 9), (5, 5, 5)), ((7, 9, 5), (4, 3, 6))])
def test_fft_convolution_is_scipy_signals_same_mode(image_shape: tuple[int, ...],
                                                    kernel_shape: tuple[int, ...]) -> None:
    from scipy import signal

    from corx.dosimetry.dose import fft_convolve_same

    rng = np.random.default_rng(2)
    image, kernel = rng.random(image_shape), rng.random(kernel_shape)
    got = fft_convolve_same(image, kernel)
    assert got.shape == image_shape
    np.testing.assert_array_equal(got, signal.fftconvolve(image, kernel, mode="same"))


def test_the_pipeline_and_its_writers_do_not_import_scipy_signal() -> None:
    """scipy.signal (and the scipy.stats it pulls in) cost about 1 s of import in the CLI and in the side process."""
    import subprocess
    import sys

    code = ("import sys, corx.pipeline.run, corx.io.dicom_export, corx.io.rtstruct\n"
            "print(sorted(m for m in ('scipy.signal', 'scipy.stats') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"

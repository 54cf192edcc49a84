"""177Lu dose voxel kernel (corx.dosimetry.dose_kernel) and kernel-convolution dose (corx.dosimetry.dose, "dvk")."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import integrate

from corx.cli import main
from corx.dosimetry.dose import dose_from_ct, dose_from_tia, dvk_water_dose, parse_dose_mode
from corx.dosimetry.dose_kernel import (
    LANCONELLI_2012,
    LU177_BETA_MEAN_MEV,
    MGY_PER_MEV_PER_G,
    dose_voxel_kernel,
    electron_point_kernel,
    kernel_components,
    kernel_energy,
    named_values,
    photon_emitted_mev,
    photon_point_kernel,
)
from corx.dosimetry.physics import DOSE_GY_G_PER_MBQH, LU177_ELECTRON_MEV
from corx.errors import CorxError

NEIGHBOUR_TOLERANCE = 0.25
CENTRE_TOLERANCE = 0.10


@pytest.mark.parametrize("voxel_mm", [4.8, 4.0])
def test_beta_kernel_matches_lanconelli_2012(voxel_mm: float) -> None:
    """Lanconelli et al. 2012 (soft tissue, 177Lu) carry the beta energy (0.1333 MeV; next test): compare alike."""
    beta = named_values(dose_voxel_kernel(voxel_mm, electron_mev=LU177_BETA_MEAN_MEV))
    full = named_values(dose_voxel_kernel(voxel_mm))
    for name, ref in LANCONELLI_2012[voxel_mm].items():
        print(f"{voxel_mm} mm {name}: betas {beta[name]:.3e}, all electrons {full[name]:.3e}, Lanconelli {ref:.2e}"
              f" (ratios {beta[name] / ref:.3f}, {full[name] / ref:.3f})")
        tolerance = CENTRE_TOLERANCE if name == "centre" else NEIGHBOUR_TOLERANCE
        assert beta[name] == pytest.approx(ref, rel=tolerance)
        assert full[name] > beta[name]


def test_lanconelli_kernel_holds_the_beta_energy_only() -> None:
    """Lanconelli's 4.8 mm values over the 3x3x3 neighbourhood (electrons cannot go further) less our photon share
    give 0.133 MeV per decay: the betas, not the 0.148 MeV of all electrons (conversion and Auger included)."""
    ref = LANCONELLI_2012[4.8]
    shell = ref["centre"] + 6 * ref["face"] + 12 * ref["edge"] + 8 * ref["corner"]
    _, photons = kernel_components(4.8)
    c = np.array(photons.shape) // 2
    photon_shell = photons[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2].sum()
    electron_mev = (shell - photon_shell) * 4.8**3 / 1000.0 / MGY_PER_MEV_PER_G
    print(f"Lanconelli 2012, 4.8 mm: {electron_mev:.4f} MeV of electron energy in the 3x3x3 neighbourhood")
    assert electron_mev == pytest.approx(LU177_BETA_MEAN_MEV, rel=0.02)
    assert electron_mev < 0.95 * LU177_ELECTRON_MEV


def test_kernel_is_odd_symmetric_and_peaks_at_the_centre() -> None:
    k = dose_voxel_kernel(3.9, radius_mm=20.0)
    assert k.shape == (13, 13, 13) and all(n % 2 == 1 for n in k.shape)
    np.testing.assert_allclose(k, k[::-1, ::-1, ::-1], rtol=1e-12)
    np.testing.assert_allclose(k, k[:, ::-1], rtol=1e-12)
    np.testing.assert_allclose(k, np.transpose(k, (2, 0, 1)), rtol=1e-6)  # cubic voxels: axes interchangeable
    assert np.unravel_index(np.argmax(k), k.shape) == (6, 6, 6)
    assert np.all(np.diff(k[6:, 6, 6]) < 0) and k.min() > 0
    aniso = dose_voxel_kernel((4.0, 4.0, 5.0), radius_mm=10.0)
    assert aniso.shape == (7, 7, 5) and np.argmax(aniso) == aniso.size // 2


def test_point_kernels_conserve_energy_in_infinite_water() -> None:
    r_e = integrate.quad(lambda r: 4 * math.pi * r * r * electron_point_kernel(np.array(r))[()], 0, 0.5,
                         points=[2 / 53.57], limit=200)[0]
    assert r_e == pytest.approx(LU177_ELECTRON_MEV, rel=1e-6)
    r_g = integrate.quad(lambda r: 4 * math.pi * r * r * photon_point_kernel(np.array(r))[()], 1e-9, np.inf,
                         limit=400)[0]
    assert r_g == pytest.approx(photon_emitted_mev(), rel=1e-4)  # linear build-up fixed by energy conservation
    assert photon_emitted_mev() == pytest.approx(0.0351, rel=0.06)  # ICRP 107 total; L x-rays etc. left out


def test_kernel_energy_balance() -> None:
    big = kernel_energy(4.8, radius_mm=25.0)
    print(f"4.8 mm, 25 mm: electrons {big.electron_mev:.5f} MeV ({big.electron_fraction:.4f}), photons "
          f"{big.photon_mev:.5f} MeV ({big.photon_fraction:.3f} of {big.photon_emitted_mev:.4f})")
    assert big.electron_mev == pytest.approx(LU177_ELECTRON_MEV, rel=0.01)
    assert 0.05 < big.photon_fraction < 0.5
    assert big.total_mev == pytest.approx(big.electron_mev + big.photon_mev)
    small = kernel_energy(4.8, radius_mm=10.0)
    assert small.photon_fraction < big.photon_fraction
    alone = kernel_energy(4.8, radius_mm=0.0)  # the source voxel only: electrons escaping it are lost
    assert 0.85 < alone.electron_fraction < 0.95


def test_cli_writes_the_kernel_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "k.nii.gz"
    assert main(["kernel", str(out), "--voxel-mm", "4.8", "--radius-mm", "10"]) == 0
    printed = capsys.readouterr().out
    assert "centre 1.962e-01" in printed and "electrons 0.14792 MeV" in printed and "photons" in printed
    img = nib.load(str(out))
    expected = np.diag([4.8, 4.8, 4.8, 1.0])
    expected[:3, 3] = -4.8 * 3  # ceil(10 / 4.8) = 3 voxels either side
    assert img.shape == (7, 7, 7) and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, expected, atol=1e-5)
    np.testing.assert_allclose(img.affine @ [3, 3, 3, 1], [0, 0, 0, 1], atol=1e-5)  # centre voxel at the origin
    np.testing.assert_allclose(np.asarray(img.dataobj), dose_voxel_kernel(4.8, 10.0), rtol=1e-6)
    assert main(["kernel", str(out), "--voxel-mm", "4.8"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["kernel", str(out), "--voxel-mm", "4.0", "--overwrite"]) == 0
    assert nib.load(str(out)).header.get_zooms() == pytest.approx((4.0, 4.0, 4.0))
    assert main(["kernel", str(tmp_path / "k.txt")]) == 2
    assert main(["kernel", str(tmp_path / "k2.nii.gz"), "--voxel-mm", "-1"]) == 2


def test_dvk_uniform_water_interior_is_led_times_the_kernel_energy() -> None:
    tia = np.full((20, 20, 20), 25.0, np.float32)  # MBq h/mL; the 13^3 kernel fits around voxel (10, 10, 10)
    water = np.ones_like(tia)
    dvk = dose_from_tia(tia, water, mode="dvk", voxel_mm=4.8)
    led = dose_from_tia(tia, water)
    energy = kernel_energy(4.8)
    ratio = float(dvk[10, 10, 10] / led[10, 10, 10])
    print(f"uniform water, interior: DVK / LED = {ratio:.4f} (kernel energy / 0.14792 MeV = "
          f"{energy.total_mev / LU177_ELECTRON_MEV:.4f})")
    assert ratio == pytest.approx(energy.total_mev / LU177_ELECTRON_MEV, rel=1e-4)
    assert 1.0 < ratio < 1.1
    # a block corner misses half its electron neighbours (~9 % of the energy escapes a voxel) and most photons
    assert dvk.dtype == np.float32 and 0.88 < dvk[0, 0, 0] / dvk[10, 10, 10] < 0.97


def test_dvk_density_scaling_and_body() -> None:
    tia = np.zeros((12, 12, 12), np.float32)
    tia[4:8, 4:8, 4:8] = 10.0
    body = np.zeros(tia.shape, bool)
    body[1:11, 1:11, 1:11] = True
    water = dose_from_tia(tia, np.ones_like(tia), body, mode="dvk", voxel_mm=(4.0, 4.0, 4.0))
    bone = dose_from_tia(tia, np.full_like(tia, 2.0), body, mode="dvk", voxel_mm=(4.0, 4.0, 4.0))
    np.testing.assert_allclose(bone, water / 2, rtol=1e-6)
    assert (water[~body] == 0).all() and (water[body] > 0).all()
    gas = dose_from_tia(tia, np.full_like(tia, 0.001), body, mode="dvk", voxel_mm=4.0)  # floored at 0.1 g/mL
    np.testing.assert_allclose(gas, water * 10, rtol=1e-5)


def test_dvk_point_source_deposits_the_kernel_energy() -> None:
    tia = np.zeros((16, 16, 16), np.float32)
    tia[8, 8, 8] = 2.0  # MBq h/mL in one 4.8 mm voxel
    dose = dose_from_tia(tia, np.ones_like(tia), mode="dvk", voxel_mm=4.8).astype(np.float64)
    decays = 2.0 * 0.110592 * 3600.0 * 1e6
    absorbed_j = decays * kernel_energy(4.8).total_mev * 1.602176634e-13
    assert (dose * 0.110592e-3).sum() == pytest.approx(absorbed_j, rel=1e-5)  # Gy x kg = J
    assert dose.argmax() == np.ravel_multi_index((8, 8, 8), dose.shape)
    np.testing.assert_allclose(dvk_water_dose(tia, 4.8), dose, rtol=1e-5)


def test_dose_from_ct_dvk_uses_the_grid_voxel_size() -> None:
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    ct = np.zeros((14, 14, 14), np.float32)
    ct[:2] = -1000.0  # air slab
    tia = np.full(ct.shape, 3.0, np.float32)
    res = dose_from_ct(tia, aff, ct, aff, mode="DVK")
    assert (res.dose_gy[:2] == 0).all()
    led = DOSE_GY_G_PER_MBQH * 3.0 / res.density[7, 7, 7]
    assert res.dose_gy[7, 7, 7] == pytest.approx(led, rel=0.06) and res.dose_gy[7, 7, 7] > led
    assert res.dose_gy[2, 7, 7] < res.dose_gy[7, 7, 7]  # next to the air: part of the energy is lost


def test_parse_dose_mode() -> None:
    assert parse_dose_mode(None) == "led" and parse_dose_mode(" DVK ") == "dvk" and parse_dose_mode("led") == "led"
    with pytest.raises(CorxError, match="available: led, dvk"):
        parse_dose_mode("monte-carlo")

"""TIA uncertainty: the fit covariance against Monte Carlo, the VOI combination, the outputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from corx.dosimetry.command import run_tia
from corx.dosimetry.tia import monoexp_tia_sd, tia_from_curves
from corx.dosimetry.uncertainty import combine_percent, surface_area_mm2, voi_uncertainty_columns, volume_sd_percent
from corx.errors import CorxError

HOURS = np.array([4.0, 24.0, 48.0, 120.0])


def test_fit_sd_matches_the_spread_of_noisy_fits() -> None:
    """Gaussian noise on a mono-exponential: the predicted SD is the observed SD of the fitted TIAs (5 %)."""
    rng = np.random.default_rng(1)
    truth = 1e4 * np.exp(-0.02 * HOURS)
    curves = (truth[:, None] + rng.normal(0, 300, (4, 4000))).astype(np.float32)
    res = tia_from_curves(curves, HOURS)
    fitted = res.rule == 1
    assert fitted.mean() > 0.99
    predicted = math.sqrt(float(np.nanmean(res.tia_sd[fitted].astype(np.float64) ** 2)))
    observed = float(res.tia[fitted].std())
    assert predicted == pytest.approx(observed, rel=0.05), (predicted, observed)


def test_no_fit_sd_where_nothing_is_left_to_estimate_the_noise() -> None:
    assert np.isnan(monoexp_tia_sd(np.array([1e4]), np.array([0.02]), np.array([0.0]), HOURS[:2])).all()
    one = tia_from_curves(np.array([[100.0]], np.float32), [48.0])
    assert one.tia_sd is None or np.isnan(one.tia_sd).all()
    exact = tia_from_curves((1e4 * np.exp(-0.02 * HOURS))[:, None].astype(np.float32), HOURS)
    assert exact.tia_sd[0] < 1e-3 * exact.tia[0]  # a perfect fit: (almost) no fit uncertainty


def test_volume_uncertainty_from_the_surface() -> None:
    mask = np.zeros((7, 7, 7), bool)
    mask[2:5, 2:5, 2:5] = True
    assert surface_area_mm2(mask, (2.0, 2.0, 2.0)) == pytest.approx(6 * 9 * 4.0)
    assert surface_area_mm2(mask, (1.0, 2.0, 3.0)) == pytest.approx(2 * 9 * (6 + 3 + 2))
    # 0.5 voxel (1 mm) boundary SD: 216 mm^2 x 1 mm / 216 mm^3
    assert volume_sd_percent(mask, (2.0, 2.0, 2.0)) == pytest.approx(100.0)
    big = np.zeros((40, 40, 40), bool)
    big[5:35, 5:35, 5:35] = True
    assert volume_sd_percent(big, (2.0, 2.0, 2.0)) == pytest.approx(100.0 * 6 * 900 * 4 * 1.0 / (27000 * 8))
    cols = voi_uncertainty_columns(3.0, big, (2.0, 2.0, 2.0), calibration_sd_percent=4.0)
    assert cols["tia_voi_sd_percent"] == pytest.approx(5.0)
    assert cols["dose_voi_sd_percent"] == pytest.approx(math.sqrt(25 + cols["volume_sd_percent"] ** 2))
    assert math.isnan(combine_percent(float("nan"), 4.0))  # an unknown part is not zero


def _patient(tmp: Path, calibration_sd: object = 5.0) -> Path:
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[3:9, 3:9, 3:9] = 1
    rng = np.random.default_rng(0)
    tps = []
    tmp.mkdir(parents=True)
    for h in HOURS:
        tid = f"{h:g}h"
        act = np.where(labels > 0, 1e4 * np.exp(-0.02 * h), 0.0) * rng.normal(1, 0.05, labels.shape)
        nib.save(nib.Nifti1Image(np.maximum(act, 0).astype(np.float32), aff), str(tmp / f"spect_{tid}.nii.gz"))
        nib.save(nib.Nifti1Image(np.zeros((12, 12, 12), np.int16), aff), str(tmp / f"ct_{tid}.nii.gz"))
        tps.append({"id": tid, "hours": float(h), "ct": f"ct_{tid}.nii.gz", "spect": f"spect_{tid}.nii.gz"})
    nib.save(nib.Nifti1Image(labels, aff), str(tmp / "labels.nii.gz"))
    raw = {"patient_id": "U001", "injected_activity_mbq": 7000, "reference": "4h", "timepoints": tps,
           "labels": "labels.nii.gz", "calibration_uncertainty_percent": calibration_sd}
    (tmp / "patient.json").write_text(json.dumps(raw))
    return tmp / "patient.json"


def test_corx_tia_writes_the_sd_map_and_the_voi_uncertainty(tmp_path: Path) -> None:
    res = run_tia(_patient(tmp_path / "p"), tmp_path / "out", quiet=True)
    sd = nib.load(str(tmp_path / "out" / "tia_sd.nii.gz"))
    np.testing.assert_allclose(sd.affine, np.diag([4.0, 4.0, 4.0, 1.0]))
    data = np.asarray(sd.dataobj)
    inside = np.asarray(nib.load(str(tmp_path / "p" / "labels.nii.gz")).dataobj) > 0
    assert np.isfinite(data[inside]).all() and np.isnan(data[~inside]).all()  # background: no fit
    rel = data[inside] / res.tia.tia_mbqh_per_ml[inside]
    assert 0.005 < float(np.median(rel)) < 0.1  # 5 % noise per sample, 4 samples
    row = next(csv.DictReader((tmp_path / "out" / "voi.csv").open()))
    assert float(row["calibration_sd_percent"]) == 5.0
    fit, vol = float(row["tia_fit_sd_percent"]), float(row["volume_sd_percent"])
    assert 0 < fit < 2  # the mean curve of 216 voxels is much less noisy than one voxel
    assert float(row["tia_voi_sd_percent"]) == pytest.approx(math.hypot(fit, 5.0), rel=1e-5)
    assert float(row["dose_voi_sd_percent"]) == pytest.approx(math.sqrt(fit**2 + 25 + vol**2), rel=1e-5)
    with pytest.raises(CorxError, match="calibration_uncertainty_percent"):
        run_tia(_patient(tmp_path / "bad", calibration_sd=-1), tmp_path / "o2", quiet=True)

"""Pure-math tests of the voxel TIA (eq. 6), the multi-model fit, VOI tables, warping and `corx tia`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.optimize import curve_fit

from corx.cli import main
from corx.dosimetry.command import run_tia
from corx.dosimetry.kinetics_models import (
    KineticModel,
    aicc,
    compute_tia_multimodel,
    eligible_models,
    models_from_curves,
)
from corx.dosimetry.physics import LU177_HALF_LIFE_H, LU177_LAMBDA_PER_H
from corx.dosimetry.tia import (
    TiaRule,
    compute_tia,
    fit_monoexp,
    tia_from_curves,
    trapezoid_tail,
)
from corx.dosimetry.voi import Voi, label_names_from_json, phantom_vois, voi_table
from corx.dosimetry.workflow import run_tia_on_arrays
from corx.errors import CorxError
from corx.geometry.warp import field_from_nifti, field_to_nifti, warp_image
from corx.io.activity import clip_small_negatives

LP = LU177_LAMBDA_PER_H
H4 = np.array([4.0, 24.0, 48.0, 120.0])


def mono(a0: float, lam: float, hours: np.ndarray) -> np.ndarray:
    return a0 * np.exp(-lam * hours)


# ------------------------------------------------------------------------------------------------ physics
def test_lutetium_constants() -> None:
    assert pytest.approx(159.528) == LU177_HALF_LIFE_H
    assert pytest.approx(4.345e-3, rel=1e-3) == LP


# ---------------------------------------------------------------------------------------------- eq. 6 core
@pytest.mark.parametrize("hours", [H4, np.array([4.0, 24.0, 48.0]), np.array([0.5, 4.0, 24.0, 48.0])])
@pytest.mark.parametrize("lam", [0.006, 0.01, 0.03, 0.1, 0.3])
def test_known_exponential_gives_analytic_tia(hours: np.ndarray, lam: float) -> None:
    a0 = 2.5e5  # Bq/mL
    res = tia_from_curves(mono(a0, lam, hours)[:, None], hours)
    assert res.rule[0] == TiaRule.MONOEXP
    assert res.tia[0] == pytest.approx(a0 / lam, rel=2e-4)  # eq. 6: integral from 0 of the fit
    assert res.lambda_eff[0] == pytest.approx(lam, rel=2e-4)
    assert res.rmse[0] < 1e-4 * a0


def test_linear_head_integrates_ramp_from_zero() -> None:
    a0, lam = 1000.0, 0.05
    res = tia_from_curves(mono(a0, lam, H4)[:, None], H4, head="linear")
    a1 = a0 * math.exp(-lam * 4.0)
    assert res.tia[0] == pytest.approx(a1 * 4.0 / 2 + a1 / lam, rel=2e-4)
    with pytest.raises(CorxError, match="head"):
        tia_from_curves(mono(a0, lam, H4)[:, None], H4, head="cubic")


def test_trapezoid_plus_tail_hand_example() -> None:
    hours = np.array([4.0, 24.0, 48.0])
    curve = np.array([[10.0], [30.0], [20.0]], dtype=np.float32)  # rising then falling: lambda_eff < lambda_phys?
    expected = 0.5 * 4 * 10 + 0.5 * (10 + 30) * 20 + 0.5 * (30 + 20) * 24 + 20 * LU177_HALF_LIFE_H / math.log(2)
    assert trapezoid_tail(curve, hours)[0] == pytest.approx(expected, rel=1e-6)
    res = tia_from_curves(curve, hours)
    assert res.rule[0] == TiaRule.SLOW  # fitted mono-exp rises over 4-48 h
    assert res.tia[0] == pytest.approx(expected, rel=1e-6)


def test_rules_chosen_as_expected() -> None:
    hours = H4
    curves = np.stack([
        mono(1000, 0.02, hours),                    # 1: clean mono-exp
        np.array([100.0, 200.0, 300.0, 400.0]),     # 2: rising
        mono(1000, 0.5 * LP, hours),                # 2: clears slower than physical decay
        np.array([500.0, 0.0, 0.0, 0.0]),           # 3: one positive sample
        mono(1000, 0.8, hours),                     # 4: lambda*t1 = 3.2, TIA mostly back-extrapolated
        np.zeros(4),                                # 0: no activity
    ], axis=1)
    res = tia_from_curves(curves, hours)
    assert res.rule.tolist() == [TiaRule.MONOEXP, TiaRule.SLOW, TiaRule.SLOW, TiaRule.FIT_FAILED, TiaRule.EXCESSIVE,
                                 TiaRule.BACKGROUND]
    trap = trapezoid_tail(curves.astype(np.float32), hours)
    np.testing.assert_allclose(res.tia[1:], trap[1:], rtol=1e-6)
    assert res.tia[-1] == 0
    assert res.tia_monoexp[4] > 2 * trap[4]  # why rule 4 was chosen
    assert res.rmse[3] == 0 and res.rmse[5] == 0
    # a larger ratio keeps the mono-exponential value
    assert tia_from_curves(curves[:, 4:5], hours, max_tia_ratio=10).rule[0] == TiaRule.MONOEXP


def test_min_activity_marks_background() -> None:
    curves = np.stack([mono(5.0, 0.02, H4), mono(500.0, 0.02, H4)], axis=1)
    res = tia_from_curves(curves, H4, min_activity=10.0)
    assert res.rule.tolist() == [TiaRule.BACKGROUND, TiaRule.MONOEXP]
    assert res.tia[0] == pytest.approx(trapezoid_tail(curves[:, :1].astype(np.float32), H4)[0])


def test_gauss_newton_matches_least_squares() -> None:
    rng = np.random.default_rng(3)
    n = 40
    a0 = rng.uniform(1e3, 1e5, n)
    lam = rng.uniform(0.008, 0.08, n)
    clean = mono(a0[None], lam[None], H4[:, None])
    noisy = clean * rng.normal(1.0, 0.08, clean.shape)
    a_fit, l_fit, sse, ok = fit_monoexp(noisy, H4)
    assert ok.all()
    for i in range(n):
        (ra, rl), _ = curve_fit(lambda t, a, k: a * np.exp(-k * t), H4, noisy[:, i], p0=(a0[i], lam[i]),
                                maxfev=10000)
        assert a_fit[i] == pytest.approx(ra, rel=2e-3)
        assert l_fit[i] == pytest.approx(rl, rel=2e-3, abs=1e-6)
        ref_sse = float(((noisy[:, i] - ra * np.exp(-rl * H4)) ** 2).sum())
        assert sse[i] <= ref_sse * 1.001 + 1e-6 * noisy[:, i].max() ** 2


def test_compute_tia_volume_units_and_rmse() -> None:
    rng = np.random.default_rng(0)
    shape = (6, 5, 4)
    a0 = rng.uniform(1e4, 1e5, shape)
    lam = rng.uniform(0.01, 0.05, shape)
    act = (a0[None] * np.exp(-lam[None] * H4[:, None, None, None])).astype(np.float32)
    res = compute_tia(act, H4, voxel_volume_ml=0.058, threads=2)
    assert res.tia_mbqh_per_ml.shape == shape and res.tia_mbqh_per_ml.dtype == np.float32
    assert (res.rule == TiaRule.MONOEXP).all()
    np.testing.assert_allclose(res.tia_mbqh_per_ml, a0 / lam * 1e-6, rtol=5e-4)
    np.testing.assert_allclose(res.tia_mbqh, res.tia_mbqh_per_ml * 0.058, rtol=1e-6)
    np.testing.assert_allclose(res.lambda_eff_per_h, lam, rtol=5e-4)
    assert float(res.rmse_bq_per_ml.max()) < 1e-4 * float(a0.max())
    assert res.rule_counts() == {str(TiaRule.MONOEXP): 120}
    # RMSE is the root mean square residual of the fit, in Bq/mL
    curve = np.array([1000.0, 400.0, 250.0, 60.0])
    one = compute_tia(curve[:, None, None, None].astype(np.float32), H4, 1.0)
    a, k, _, _ = fit_monoexp(curve[:, None], H4)
    resid = curve - a[0] * np.exp(-k[0] * H4)
    assert one.rmse_bq_per_ml.item() == pytest.approx(math.sqrt((resid ** 2).mean()), rel=1e-3)


# --------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors() -> None:
    act = np.ones((3, 4, 4, 4), np.float32)
    with pytest.raises(CorxError, match="3 frames but 4 time points"):
        compute_tia(act, H4, 1.0)
    with pytest.raises(CorxError, match="strictly increasing"):
        compute_tia(act, [4.0, 48.0, 24.0], 1.0)
    with pytest.raises(CorxError, match="strictly increasing"):
        compute_tia(act, [4.0, 4.0, 24.0], 1.0)
    with pytest.raises(CorxError, match="at least 1 time point is needed"):
        compute_tia(act[:0], [], 1.0)
    with pytest.raises(CorxError, match=r"single time point must be after the injection"):
        compute_tia(act[:1], [0.0], 1.0)
    with pytest.raises(CorxError, match="single time point only"):
        compute_tia(act, [4.0, 24.0, 48.0], 1.0, prior_half_life_h=np.full((4, 4, 4), 50.0))
    with pytest.raises(CorxError, match=r"\(T, X, Y, Z\)"):
        compute_tia(act[:, 0], [4.0, 24.0, 48.0], 1.0)
    with pytest.raises(CorxError, match="voxel_volume_ml"):
        compute_tia(act, [4.0, 24.0, 48.0], 0.0)
    bad = act.copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(CorxError, match=r"spect_24h.nii.gz: 1 non-finite"):
        compute_tia(bad, [4.0, 24.0, 48.0], 1.0, names=["spect_4h.nii.gz", "spect_24h.nii.gz", "x"])
    bad = act.copy()
    bad[2, 1, 1, 1] = -0.5
    with pytest.raises(CorxError, match=r"time point 2 \(48 h\): 1 negative activity"):
        compute_tia(bad, [4.0, 24.0, 48.0], 1.0)
    ok = act.copy()
    ok[2, 1, 1, 1] = -1e-6  # rounding-level negatives are accepted and treated as 0
    assert np.isfinite(compute_tia(ok, [4.0, 24.0, 48.0], 1.0).tia_mbqh_per_ml).all()


# ------------------------------------------------------------------------------------------------ VOI table
def _voi_fixture() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((6, 4, 4), np.uint8)
    labels[0:2] = 4
    labels[2:3] = 6
    labels[3:4] = 7
    labels[4:6] = 11
    rng = np.random.default_rng(1)
    amp = rng.uniform(1e4, 1e5, labels.shape)
    lam = np.where(labels == 4, 0.02, np.where(labels == 11, 0.01, 0.05))
    act = (amp[None] * np.exp(-lam[None] * H4[:, None, None, None])).astype(np.float32)
    return act, labels


def test_voi_sums_and_percent_difference() -> None:
    act, labels = _voi_fixture()
    vv = 0.25
    tia = compute_tia(act, H4, vv)
    vois = phantom_vois(labels, {4: "liver", 11: "tumour_1"})
    assert vois == [Voi("liver", (4,)), Voi("kidneys", (6, 7)), Voi("tumour_1", (11,))]
    rows = voi_table(act, H4, labels, tia, vois=vois)
    by = {r["voi"]: r for r in rows}
    assert by["kidneys"]["n_voxels"] == 32 and by["kidneys"]["volume_ml"] == pytest.approx(8.0)
    for name, mask in (("liver", labels == 4), ("kidneys", np.isin(labels, (6, 7))), ("tumour_1", labels == 11)):
        voxel_sum = float(tia.tia_mbqh[mask].sum())
        assert by[name]["tia_voxel_sum_mbqh"] == pytest.approx(voxel_sum, rel=1e-5)
        # same lambda everywhere in the VOI: the mean curve is mono-exponential, VOI TIA = sum of voxel TIAs
        mean_curve = act[:, mask].mean(axis=1)
        lam = {"liver": 0.02, "kidneys": 0.05, "tumour_1": 0.01}[name]
        expected = mean_curve[0] * math.exp(lam * 4.0) / lam * 1e-6 * mask.sum() * vv
        assert by[name]["tia_voi_mbqh"] == pytest.approx(expected, rel=1e-3)
        assert abs(by[name]["percent_difference"]) < 0.1


def test_voi_percent_difference_when_kinetics_mix() -> None:
    labels = np.full((2, 1, 1), 5, np.uint8)
    act = np.stack([mono(1000, 0.2, H4), mono(1000, 0.006, H4)], axis=1).reshape(4, 2, 1, 1).astype(np.float32)
    tia = compute_tia(act, H4, 1.0)
    row = voi_table(act, H4, labels, tia)[0]
    assert row["voi"] == "label_5"
    vox = float(tia.tia_mbqh.sum())
    voi_fit = tia_from_curves(act.reshape(4, 2).mean(axis=1, keepdims=True), H4)
    assert row["tia_voi_mbqh"] == pytest.approx(float(voi_fit.tia[0]) * 1e-6 * 2, rel=1e-5)
    assert row["percent_difference"] == pytest.approx(100 * (vox - row["tia_voi_mbqh"]) / row["tia_voi_mbqh"])
    assert abs(row["percent_difference"]) > 1


def test_voi_bad_inputs() -> None:
    act, labels = _voi_fixture()
    tia = compute_tia(act, H4, 1.0)
    with pytest.raises(CorxError, match="not present in the label map"):
        voi_table(act, H4, labels, tia, vois=[Voi("spleen", (5,))])
    with pytest.raises(CorxError, match="no labelled voxel"):
        voi_table(act, H4, np.zeros_like(labels), tia)
    with pytest.raises(CorxError, match="does not match the activity grid"):
        voi_table(act, H4, labels[:3], tia)


def test_label_names_from_json_layouts(tmp_path: Path) -> None:
    p = tmp_path / "tia_voi.json"
    p.write_text(json.dumps({"label_names": {"4": "liver", "11": "tumour_1"}}))
    assert label_names_from_json(p) == {4: "liver", 11: "tumour_1"}
    p.write_text(json.dumps({"vois": [{"name": "spleen", "labels": [5]}, {"name": "kidneys", "labels": [6, 7]}]}))
    assert label_names_from_json(p) == {5: "spleen"}
    p.write_text("{broken")
    with pytest.raises(CorxError, match=r"tia_voi\.json"):
        label_names_from_json(p)


# ------------------------------------------------------------------------------------------ multi-model
H6 = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])
TRUE_MODELS = {
    KineticModel.MONOEXP: lambda t: 1000 * np.exp(-(LP + 0.02) * t),
    KineticModel.UPTAKE_PHYSICAL: lambda t: 1000 * (np.exp(-LP * t) - np.exp(-(LP + 0.08) * t)),
    KineticModel.UPTAKE_WASHOUT: lambda t: 1000 * (np.exp(-(LP + 0.01) * t) - np.exp(-(LP + 0.3) * t)),
    KineticModel.BIEXP: lambda t: 600 * np.exp(-(LP + 0.2) * t) + 400 * np.exp(-(LP + 0.01) * t),
}


def _sarrut_area(f, t1: float) -> float:
    t = np.linspace(t1, 6000.0, 3_000_001)
    return 0.5 * t1 * float(f(np.array([t1]))[0]) + float(np.trapz(f(t), t))


def test_aicc_selects_true_model_on_noiseless_curves() -> None:
    curves = np.stack([f(H6) for f in TRUE_MODELS.values()], axis=1)
    res = models_from_curves(curves, H6)
    assert res.model.tolist() == list(TRUE_MODELS)
    for i, f in enumerate(TRUE_MODELS.values()):
        assert res.tia[i] == pytest.approx(_sarrut_area(f, H6[0]), rel=1e-4)
        assert res.r2[i] > 0.999


def test_model_eligibility_and_aicc() -> None:
    assert eligible_models(3) == []
    assert eligible_models(4) == [KineticModel.MONOEXP, KineticModel.UPTAKE_PHYSICAL]
    assert eligible_models(5) == [KineticModel.MONOEXP, KineticModel.UPTAKE_PHYSICAL, KineticModel.UPTAKE_WASHOUT]
    assert eligible_models(6) == [KineticModel.MONOEXP, KineticModel.UPTAKE_PHYSICAL, KineticModel.UPTAKE_WASHOUT,
                                  KineticModel.BIEXP]
    assert aicc(np.array([4.0]), 4, 2)[0] == pytest.approx(4 * math.log(1.0) + 4 + 12)
    with pytest.raises(CorxError, match="AICc needs at least 5 points"):
        aicc(np.array([1.0]), 4, 3)


def test_multimodel_four_timepoints_and_rejections() -> None:
    curves = np.stack([
        TRUE_MODELS[KineticModel.MONOEXP](H4),
        TRUE_MODELS[KineticModel.UPTAKE_PHYSICAL](H4),
        np.array([100.0, 900.0, 50.0, 700.0]),   # zig-zag: no model reaches R^2 > 0.9
        np.zeros(4),
    ], axis=1)
    res = models_from_curves(curves, H4, min_activity=1.0)
    assert res.model.tolist() == [KineticModel.MONOEXP, KineticModel.UPTAKE_PHYSICAL, KineticModel.NONE,
                                  KineticModel.BELOW_THRESHOLD]
    trap = trapezoid_tail(curves.astype(np.float32), H4)
    assert res.tia[2] == pytest.approx(trap[2]) and res.tia[3] == 0
    assert set(res.aicc) == {KineticModel.MONOEXP, KineticModel.UPTAKE_PHYSICAL}


def test_compute_tia_multimodel_volume() -> None:
    rng = np.random.default_rng(5)
    shape = (8, 6, 5)
    ku = rng.uniform(0.03, 0.3, shape)
    t = H6[:, None, None, None]
    act = (1e5 * (np.exp(-LP * t) - np.exp(-(LP + ku[None]) * t))).astype(np.float32)
    act[:, 0] = 0.0
    res = compute_tia_multimodel(act, H6, 0.1, threshold_fraction=0.01, threads=2, chunk=64)
    assert res.model.shape == shape and res.tia_mbqh_per_ml.dtype == np.float32
    assert (res.model[0] == KineticModel.BELOW_THRESHOLD).all()
    assert (res.model[1:] == KineticModel.UPTAKE_PHYSICAL).mean() > 0.95
    lu = LP + ku[1:]
    t1 = H6[0]
    f1 = 1e5 * (math.exp(-LP * t1) - np.exp(-lu * t1))
    exact = 0.5 * t1 * f1 + 1e5 * (math.exp(-LP * t1) / LP - np.exp(-lu * t1) / lu)
    np.testing.assert_allclose(res.tia_mbqh_per_ml[1:], exact * 1e-6, rtol=2e-3)
    with pytest.raises(CorxError, match="at least 4 time points"):
        compute_tia_multimodel(act[:3], H6[:3], 0.1)


# ----------------------------------------------------------------------------------------------- warping
def test_warp_identity_shift_and_trilinear() -> None:
    rng = np.random.default_rng(2)
    img = rng.random((6, 7, 8)).astype(np.float32)
    u = np.zeros((3, 6, 7, 8), np.float32)
    np.testing.assert_allclose(warp_image(img, u), img, atol=1e-6)
    u[1] = 1.0  # pull from j + 1
    out = warp_image(img, u)
    np.testing.assert_allclose(out[:, :-1], img[:, 1:], atol=1e-6)
    np.testing.assert_allclose(out[:, -1], img[:, -1], atol=1e-6)  # border padding
    u[:] = 0
    u[0] = 0.5
    np.testing.assert_allclose(warp_image(img, u)[:-1], 0.5 * (img[:-1] + img[1:]), atol=1e-6)
    assert field_from_nifti(field_to_nifti(u)).shape == u.shape
    np.testing.assert_array_equal(field_from_nifti(field_to_nifti(u)), u)
    np.testing.assert_array_equal(field_from_nifti(field_to_nifti(u)[:, :, :, None, :]), u)
    with pytest.raises(CorxError, match="does not match the moving image"):
        warp_image(img, u[:, :5])
    with pytest.raises(CorxError, match=r"\(X, Y, Z, 3\)"):
        field_from_nifti(np.zeros((4, 4, 4, 2)))


# ------------------------------------------------------------------------------------------ the command
def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _patient(tmp_path: Path, hours: tuple[float, ...] = (4.0, 24.0, 48.0, 120.0)) -> Path:
    """Phantom-like patient: SPECT 10x8x6 at 5 mm, CT at 2.5 mm, kinetics per label, a tia_voi.json."""
    aff = np.diag([5.0, 5.0, 5.0, 1.0])
    aff[:3, 3] = (-20.0, -15.0, 10.0)
    ct_aff = np.diag([2.5, 2.5, 2.5, 1.0])
    ct_aff[:3, 3] = aff[:3, 3] - 1.25
    labels = np.ones((10, 8, 6), np.uint8)
    labels[0, :, :] = 0
    labels[2:4, 2:4, 1:4] = 4
    labels[5, 2:4, 1:4] = 6
    labels[6, 2:4, 1:4] = 7
    labels[7:9, 5:7, 2:4] = 11
    lam = {0: 0.0, 1: 0.05, 4: 0.02, 6: 0.03, 7: 0.03, 11: 0.01}
    amp = {0: 0.0, 1: 2e3, 4: 2e4, 6: 5e4, 7: 4e4, 11: 6e4}
    (tmp_path / "truth").mkdir(parents=True)
    _write(tmp_path / "truth" / "labels_ref.nii.gz", labels, aff)
    (tmp_path / "truth" / "tia_voi.json").write_text(json.dumps({"label_names": {"1": "body", "4": "liver",
                                                                               "11": "tumour_1"}}))
    a = np.vectorize(amp.get)(labels).astype(np.float64)
    k = np.vectorize(lam.get)(labels).astype(np.float64)
    ct = np.zeros((20, 16, 12), np.int16)
    ct[:2] = -1000
    tps = []
    for h in hours:
        tid = f"{h:g}h"
        _write(tmp_path / f"spect_{tid}.nii.gz", (a * np.exp(-k * h)).astype(np.float32), aff)
        _write(tmp_path / f"ct_{tid}.nii.gz", ct, ct_aff)
        tps.append({"id": tid, "hours": h, "ct": f"ct_{tid}.nii.gz", "spect": f"spect_{tid}.nii.gz"})
    manifest = {"patient_id": "S001", "radionuclide": "Lu-177", "injected_activity_mbq": 7400,
                "reference": tps[0]["id"], "timepoints": tps, "labels": "truth/labels_ref.nii.gz"}
    (tmp_path / "patient.json").write_text(json.dumps(manifest))
    return tmp_path / "patient.json"


def test_run_tia_writes_outputs_on_reference_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = _patient(tmp_path / "p")
    out = tmp_path / "out"
    run_tia(manifest, out)
    printed = capsys.readouterr().out
    assert "patient S001" in printed and "kidneys" in printed
    names = {p.name for p in out.iterdir()}
    assert {"tia.nii.gz", "tia_rmse.nii.gz", "tia_rule.nii.gz", "dose.nii.gz", "voi.csv", "tia_model.nii.gz",
            "tia_multimodel.nii.gz", "tia_summary.json"} <= names
    ref = nib.load(str(tmp_path / "p" / "spect_4h.nii.gz"))
    for name in ("tia.nii.gz", "tia_rule.nii.gz", "dose.nii.gz", "tia_model.nii.gz"):
        img = nib.load(str(out / name))
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine)
    tia = nib.load(str(out / "tia.nii.gz")).get_fdata()
    labels = nib.load(str(tmp_path / "p" / "truth" / "labels_ref.nii.gz")).get_fdata()
    assert tia[labels == 4].mean() == pytest.approx(2e4 / 0.02 * 1e-6, rel=1e-3)  # MBq*h/mL
    dose = nib.load(str(out / "dose.nii.gz")).get_fdata()
    assert dose[labels == 0].max() == 0  # air outside the body: no dose
    rows = list(csv.DictReader((out / "voi.csv").open()))
    assert [r["voi"] for r in rows] == ["body", "liver", "kidneys", "tumour_1"]
    for col in ("volume_ml", "tia_voi_mbqh", "tia_voxel_sum_mbqh", "percent_difference", "mean_dose_gy",
                "dmax_gy", "d2_gy", "d50_gy", "d98_gy", "v23gy_pct"):
        assert col in rows[0]
    dvh = list(csv.DictReader((out / "dvh.csv").open()))
    assert list(dvh[0]) == ["dose_gy", "body", "liver", "kidneys", "tumour_1"] and len(dvh) == 201
    for row in (dvh[0], dvh[100]):  # % of the VOI at >= the bin's dose, against the dose map itself
        assert float(row["liver"]) == pytest.approx(100 * np.mean(dose[labels == 4] >= float(row["dose_gy"]) - 1e-6),
                                                    abs=1e-3)
    assert all(float(dvh[0][name]) == 100.0 for name in ("body", "liver", "kidneys", "tumour_1"))
    bed = nib.load(str(out / "bed.nii.gz"))
    np.testing.assert_allclose(bed.affine, ref.affine)
    bed_data = bed.get_fdata()
    assert np.all(bed_data[dose > 0] >= dose[dose > 0] - 1e-6) and bed_data[dose == 0].max() == 0  # BED >= D
    kid = rows[2]
    expected = float(kid["dose_voi_gy"]) + float(kid["dose_voi_gy"]) ** 2 * (2.8 / (2.8 + float(kid["t_eff_h"]))) / 2.6
    assert float(kid["bed_voi_gy"]) == pytest.approx(expected, rel=1e-4)
    assert float(kid["eqd2_voi_gy"]) == pytest.approx(float(kid["bed_voi_gy"]) / (1 + 2 / 2.6), rel=1e-4)
    liver = rows[1]
    assert float(liver["volume_ml"]) == pytest.approx(12 * 0.125)
    assert float(liver["tia_voi_mbqh"]) == pytest.approx(2e4 / 0.02 * 1e-6 * 12 * 0.125, rel=1e-3)
    summary = json.loads((out / "tia_summary.json").read_text())
    assert summary["patient_id"] == "S001" and "rule_counts" in summary["tia"]

    with pytest.raises(CorxError, match="not empty"):
        run_tia(manifest, out)
    run_tia(manifest, out, overwrite=True, quiet=True)


def test_run_tia_three_timepoints_no_multimodel(tmp_path: Path) -> None:
    manifest = _patient(tmp_path / "p", hours=(4.0, 24.0, 48.0))
    run_tia(manifest, tmp_path / "out", quiet=True)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert "tia_model.nii.gz" not in names and "tia.nii.gz" in names


def test_cli_rejects_misaligned_spect(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = _patient(tmp_path / "p")
    bad = tmp_path / "p" / "spect_24h.nii.gz"
    img = nib.load(str(bad))
    shifted = img.affine.copy()
    shifted[0, 3] += 2.0
    _write(bad, np.asarray(img.dataobj), shifted)
    assert main(["tia", str(manifest), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "spect_24h.nii.gz" in err and "reference" in err and err.startswith("error:")
    _write(bad, np.asarray(img.dataobj)[:-1], img.affine)
    assert main(["tia", str(manifest), "--out", str(tmp_path / "out")]) == 2
    assert "spect_24h.nii.gz" in capsys.readouterr().err


def test_cli_rejects_large_negative_activity_naming_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = _patient(tmp_path / "p")
    path = tmp_path / "p" / "spect_48h.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data[3, 3, 3] = -0.2 * data.max()  # 20 % of the maximum: not reconstruction noise
    _write(path, data, img.affine)
    assert main(["tia", str(manifest), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "spect_48h.nii.gz" in err and "below -5% of the maximum" in err
    assert not (tmp_path / "out").exists()


def test_cli_sets_small_negatives_to_zero_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = _patient(tmp_path / "p")
    assert main(["tia", str(manifest), "--out", str(tmp_path / "clean")]) == 0
    path = tmp_path / "p" / "spect_48h.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(np.float32)
    zeros = np.argwhere(data == 0)[:3]
    assert len(zeros) == 3
    for i, j, k in zeros:  # CG-like undershoot where the activity is 0: 1 % of the maximum
        data[i, j, k] = -0.01 * data.max()
    _write(path, data, img.affine)
    before = path.read_bytes()
    capsys.readouterr()
    assert main(["tia", str(manifest), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "spect_48h.nii.gz: 3 negative voxels" in err and "set to 0" in err
    summary = json.loads((tmp_path / "out" / "tia_summary.json").read_text())
    assert any("3 negative voxels" in w for w in summary["warnings"])
    clean = np.asarray(nib.load(str(tmp_path / "clean" / "tia.nii.gz")).dataobj)
    assert np.array_equal(np.asarray(nib.load(str(tmp_path / "out" / "tia.nii.gz")).dataobj), clean)
    assert path.read_bytes() == before  # the input is never rewritten


def test_clip_small_negatives_reports_and_refuses() -> None:
    frame = np.array([[[10.0, -0.2], [0.0, 3.0]]], np.float32)
    clipped, message = clip_small_negatives(frame, "a.nii.gz")
    assert clipped.min() == 0 and frame.min() == np.float32(-0.2)  # a copy: the input keeps its values
    assert "a.nii.gz: 1 negative voxels" in message and "-0.2" in message and "2.00% of the maximum" in message
    same, none = clip_small_negatives(np.abs(frame), "b")
    assert none is None and same is not None
    with pytest.raises(CorxError, match=r"c.nii.gz: 1 voxels below -5% of the maximum"):
        clip_small_negatives(np.array([10.0, -0.6], np.float32), "c.nii.gz")
    with pytest.raises(CorxError, match="non-finite"):
        clip_small_negatives(np.array([1.0, np.nan], np.float32), "d")


def test_cli_missing_labels_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = _patient(tmp_path / "p")
    (tmp_path / "p" / "truth" / "labels_ref.nii.gz").unlink()
    assert main(["tia", str(manifest), "--out", str(tmp_path / "out")]) == 2
    assert "labels_ref.nii.gz" in capsys.readouterr().err


def test_run_tia_on_arrays_api() -> None:
    act, labels = _voi_fixture()
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    ct = (np.zeros(labels.shape, np.float32), aff)
    out = run_tia_on_arrays(act, H4, aff, ct=ct, labels=labels)
    assert out.tia.voxel_volume_ml == pytest.approx(0.064)
    assert out.multimodel is not None and out.dose is not None and out.voi_rows
    assert [r["voi"] for r in out.voi_rows] == ["label_4", "label_6", "label_7", "label_11"]


def test_rmse_never_exceeds_the_curve_peak_even_for_rising_or_erratic_curves() -> None:
    rng = np.random.default_rng(4)
    hours = np.array([4.0, 24.0, 48.0, 120.0])
    rising = np.outer(np.exp(hours / 10.0), rng.uniform(0.5, 2.0, 500))
    erratic = rng.gamma(0.3, 1.0, (4, 500)) * rng.uniform(0, 1e4, 500)
    curves = np.concatenate([rising, erratic], axis=1)
    result = tia_from_curves(curves, hours)
    assert np.all(np.isfinite(result.rmse))
    assert np.all(result.rmse <= curves.max(axis=0) + 1e-3)


# ------------------------------------------------------------------------------------- single time point
@pytest.mark.parametrize("x", [0.5, 2 / 3, 1.0, 1 / math.log(2), 2.0])
def test_hanscheid_against_a_mono_exponential(x: float) -> None:
    """TIA = A(t) 2t / ln 2: exact when t = T_eff (and 2 T_eff), ratio 2x / 2^x with x = t / T_eff otherwise."""
    t_eff = 60.0
    lam = math.log(2) / t_eff
    t = x * t_eff
    res = tia_from_curves(np.array([[1e4 * math.exp(-lam * t), 0.0]], np.float32), [t])
    assert res.tia[0] == pytest.approx(1e4 / lam * 2 * x / 2**x, rel=1e-5)
    assert res.tia[0] == pytest.approx(1e4 * math.exp(-lam * t) * 2 * t / math.log(2), rel=1e-5)
    assert res.rule.tolist() == [TiaRule.HANSCHEID, TiaRule.BACKGROUND] and res.tia[1] == 0
    assert res.lambda_eff[0] == pytest.approx(math.log(2) / t) and res.rmse[0] == 0


def test_prior_half_life_is_exact_for_the_true_half_life_and_per_voxel() -> None:
    act = np.zeros((1, 2, 2, 1), np.float32)
    t, prior_h = 48.0, 30.0
    lam = math.log(2) / prior_h
    act[0, :, :, 0] = 1e4 * math.exp(-lam * t)
    prior = np.full((2, 2, 1), np.nan)
    prior[0] = prior_h
    res = compute_tia(act, [t], 0.5, prior_half_life_h=prior)
    np.testing.assert_allclose(res.tia_mbqh_per_ml[0, :, 0], 1e4 / lam * 1e-6, rtol=1e-5)
    assert res.rule[0].ravel().tolist() == [TiaRule.PRIOR_HALF_LIFE] * 2
    assert res.rule[1].ravel().tolist() == [TiaRule.HANSCHEID] * 2
    np.testing.assert_allclose(res.tia_mbqh_per_ml[1, :, 0], act[0, 1, :, 0] * 2 * t / math.log(2) * 1e-6, rtol=1e-5)
    assert res.params["single_time_point"] == "prior half-life where given, else Hänscheid"
    with pytest.raises(CorxError, match="> 0 h"):
        compute_tia(act, [t], 0.5, prior_half_life_h=np.full((2, 2, 1), -3.0))


def test_corx_tia_on_one_time_point_with_a_prior_for_one_voi(tmp_path: Path) -> None:
    manifest = _patient(tmp_path / "p", hours=(72.0,))
    raw = json.loads(manifest.read_text())
    raw["prior_effective_half_life_h"] = {"liver": 40.0}
    manifest.write_text(json.dumps(raw))
    out = tmp_path / "out"
    res = run_tia(manifest, out, quiet=True)
    rows = {r["voi"]: r for r in csv.DictReader((out / "voi.csv").open())}
    liver_a = 2e4 * math.exp(-0.02 * 72.0)  # Bq/mL at 72 h
    lam = math.log(2) / 40.0
    assert int(rows["liver"]["voi_rule"]) == TiaRule.PRIOR_HALF_LIFE
    assert float(rows["liver"]["tia_voi_mbqh"]) == pytest.approx(
        liver_a * math.exp(lam * 72) / lam * 1e-6 * 12 * 0.125, rel=1e-4)
    assert float(rows["liver"]["t_eff_h"]) == pytest.approx(40.0, rel=1e-4)
    assert int(rows["kidneys"]["voi_rule"]) == TiaRule.HANSCHEID
    assert float(rows["kidneys"]["t_eff_h"]) == pytest.approx(72.0, rel=1e-4)  # Hänscheid: T_eff = t
    tia = nib.load(str(out / "tia.nii.gz")).get_fdata()
    labels = nib.load(str(tmp_path / "p" / "truth" / "labels_ref.nii.gz")).get_fdata()
    np.testing.assert_allclose(tia[labels == 4], liver_a * math.exp(lam * 72) / lam * 1e-6, rtol=1e-4)
    assert set(np.unique(res.tia.rule[labels == 4])) == {TiaRule.PRIOR_HALF_LIFE}
    raw["prior_effective_half_life_h"] = {"livr": 40.0}
    manifest.write_text(json.dumps(raw))
    with pytest.raises(CorxError, match=r"unknown VOI name\(s\) \['livr'\]"):
        run_tia(manifest, tmp_path / "out2", quiet=True)


def test_dose_mode_chooses_dose_nii_and_reports_both(tmp_path: Path) -> None:
    manifest = _patient(tmp_path / "p")
    dvk = run_tia(manifest, tmp_path / "dvk", quiet=True)
    led = run_tia(manifest, tmp_path / "led", quiet=True, dose_mode="led")
    assert {p.name for p in (tmp_path / "dvk").iterdir()} >= {"dose.nii.gz", "dose_led.nii.gz"}
    assert "dose_dvk.nii.gz" in {p.name for p in (tmp_path / "led").iterdir()}
    read = lambda d, n: np.asarray(nib.load(str(tmp_path / d / n)).dataobj)  # noqa: E731
    np.testing.assert_array_equal(read("dvk", "dose.nii.gz"), read("led", "dose_dvk.nii.gz"))
    np.testing.assert_array_equal(read("led", "dose.nii.gz"), read("dvk", "dose_led.nii.gz"))
    assert not np.allclose(read("dvk", "dose.nii.gz"), read("led", "dose.nii.gz"))  # the kernel spreads energy
    assert dvk.dose is not None and led.dose is not None and dvk.dose.mode == "dvk" and led.dose.mode == "led"
    for d, col in (("dvk", "mean_dose_dvk_gy"), ("led", "mean_dose_led_gy")):
        rows = list(csv.DictReader((tmp_path / d / "voi.csv").open()))
        assert all(float(r[col]) == pytest.approx(float(r["mean_dose_gy"]), rel=1e-6) for r in rows)
        assert all(r["dose_mode"] == d for r in rows)
    summary = json.loads((tmp_path / "dvk" / "tia_summary.json").read_text())
    assert summary["dose"]["mode"] == "dvk" and summary["dose"]["modes_written"] == ["dvk", "led"]
    with pytest.raises(CorxError, match="dose mode 'mc' is not implemented"):
        run_tia(manifest, tmp_path / "bad", quiet=True, dose_mode="mc")
    assert main(["tia", str(manifest), "--out", str(tmp_path / "cli"), "--dose", "led"]) == 0
    np.testing.assert_array_equal(read("cli", "dose.nii.gz"), read("led", "dose.nii.gz"))


def test_rule_and_model_codes_keep_their_values_and_tables() -> None:
    """The IntEnum codes are the uint8 values written in tia_rule / tia_model; every code has its names."""
    from corx.dosimetry.kinetics_models import MODEL_NAMES
    from corx.dosimetry.tia import RULE_NAMES, RULE_SHORT

    assert [int(r) for r in TiaRule] == list(range(7)) and TiaRule.PRIOR_HALF_LIFE == 6
    assert [int(m) for m in KineticModel] == list(range(6)) and KineticModel.NONE == 5
    assert set(RULE_NAMES) == set(RULE_SHORT) == set(TiaRule) and set(MODEL_NAMES) == set(KineticModel)
    assert json.loads(json.dumps({"rules": RULE_NAMES, "rule": TiaRule.SLOW})) == {
        "rules": {str(int(r)): RULE_NAMES[r] for r in TiaRule}, "rule": 2}
    res = tia_from_curves(np.array([[100.0, 0.0], [50.0, 0.0]]), [4.0, 24.0])
    assert res.rule.dtype == np.uint8 and res.rule.tolist() == [TiaRule.MONOEXP, TiaRule.BACKGROUND]


def test_code_counts_are_numpy_uniques_counts() -> None:
    from corx.dosimetry.tia import code_counts

    codes = np.random.default_rng(4).choice(np.array([0, 1, 3, 6], np.uint8), size=(9, 8, 7), p=[0.5, 0.3, 0.15, 0.05])
    values, counts = np.unique(codes, return_counts=True)
    assert code_counts(codes) == dict(zip(values.tolist(), counts.tolist(), strict=True))
    assert list(code_counts(codes)) == [0, 1, 3, 6] and code_counts(np.zeros(0, np.uint8)) == {}

"""Validation of the TIA against the phantom's ground truth (one internal patient, downsample=2: 64^3 SPECT at
7.74 mm, 4/24/48/120 h).

Figures measured with seed 0 (generator version 1) and asserted with margin:

* voxel TIA vs truth/tia_imaged.nii.gz, relative RMSE (RMSE / mean truth) over each organ's label voxels:
  true registration kidneys 0.14, liver 0.28, spleen 0.13, tumours 0.27; identity (no warp) 0.24, 0.68, 0.33,
  0.41. The floor with the true registration comes from SPECT noise, the blur mixing kinetics at organ borders
  and eq. 6 itself (4 samples of 3-exponential curves). The mean mono-exponential fit RMSE (the paper's metric)
  drops 2.5-3 x with the true registration.
* VOI TIA from the true activity maps vs truth/tia_voi.json: kidneys -8.7 %, liver +8.3 %, spleen +2.8 %,
  bladder -7.7 %. Two effects, separated below: (1) labelling at 7.74 mm: the true TIA map summed over the label
  voxels already differs from the fine-anatomy truth (kidneys -7.2 %, bladder -10 %, small tumours -30 to -50 %:
  partial volume at the borders, activity of the organ in voxels labelled as a neighbour); (2) time sampling:
  eq. 6 on 4 samples of the organ's true curve (from the json's compartment coefficients) is off by kidneys
  -1.5 %, spleen +10.8 %, bladder +2.7 %, tumours +12 to +17 % (uptake continues after 4 h, so the trapezoid
  with a physical tail is used), and the VOI TIA over the map sum reproduces that (kidneys, bladder, tumours
  within 0.2 pp; spleen 2.7 pp, its border voxels mix in the neighbours' kinetics).
  "Within a few percent" of the json therefore holds only where both effects are small; the assertions state
  each effect separately.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from corx.cli import main
from corx.dosimetry.tia import compute_tia, tia_from_curves
from corx.dosimetry.voi import label_names_from_json, phantom_vois, voi_table
from corx.geometry.warp import load_field, warp_image
from corx.io.imageio import read_array, save_image
from corx.io.manifest import Manifest, load_manifest

phantom = pytest.importorskip("corx_bundle.scripts.phantom", reason="phantom generator not available")

SEED = 0
ORGANS = {"kidneys": (6, 7), "liver": (4,), "spleen": (5,), "tumours": tuple(range(11, 16))}
# relative-RMSE bounds (true registration passes, identity fails) and measured values (seed 0)
BOUNDS = {"kidneys": 0.19, "liver": 0.40, "spleen": 0.20, "tumours": 0.34}


class Case:
    """One generated patient, its images and the TIA maps with true and identity registration."""

    def __init__(self, root: Path) -> None:
        self.dir = phantom.generate_patient(root, "internal", index=0, seed=SEED, downsample=2, n_timepoints=4)
        self.manifest: Manifest = load_manifest(self.dir / "patient.json")
        truth = self.dir / "truth"
        self.labels, self.affine = read_array(truth / "labels_ref.nii.gz", dtype=np.int32)
        self.tia_imaged = read_array(truth / "tia_imaged.nii.gz")[0]
        self.tia_true = read_array(truth / "tia.nii.gz")[0]
        self.voi_truth: dict[str, Any] = json.loads((truth / "tia_voi.json").read_text())
        self.vv = float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0
        tps = self.manifest.timepoints
        self.raw = np.stack([read_array(tp.spect)[0] for tp in tps])
        self.warped = np.stack([warp_image(self.raw[i], load_field(truth / f"field_spect_{tp.id}.nii.gz")[0])
                                for i, tp in enumerate(tps)])
        self.activity = np.stack([read_array(truth / f"activity_{tp.id}.nii.gz")[0] for tp in tps])
        hours = self.manifest.hours
        self.true_reg = compute_tia(self.warped, hours, self.vv)
        self.identity = compute_tia(self.raw, hours, self.vv)

    def rel_rmse(self, tia: np.ndarray, labels: tuple[int, ...]) -> float:
        mask = np.isin(self.labels, labels)
        err = tia[mask] - self.tia_imaged[mask]
        return float(np.sqrt(np.mean(err ** 2)) / np.mean(self.tia_imaged[mask]))


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return Case(tmp_path_factory.mktemp("phantom"))


def test_phantom_is_usable(case: Case) -> None:
    assert case.raw.shape == (4, 64, 64, 64) and case.manifest.hours.tolist() == [4.0, 24.0, 48.0, 120.0]
    assert case.raw.min() >= 0
    assert np.isin(case.labels, (6, 7)).sum() > 100


@pytest.mark.parametrize("organ", list(ORGANS))
def test_true_registration_beats_identity(case: Case, organ: str) -> None:
    labels = ORGANS[organ]
    if not np.isin(case.labels, labels).any():
        pytest.skip(f"no {organ} in this patient's field of view")
    true_err = case.rel_rmse(case.true_reg.tia_mbqh_per_ml, labels)
    ident_err = case.rel_rmse(case.identity.tia_mbqh_per_ml, labels)
    assert true_err < BOUNDS[organ], f"{organ}: true-registration TIA error {true_err:.3f}"
    assert ident_err > BOUNDS[organ], f"{organ}: identity TIA error {ident_err:.3f} unexpectedly small"
    assert ident_err > 1.3 * true_err
    mask = np.isin(case.labels, labels)
    fit_true = float(case.true_reg.rmse_bq_per_ml[mask].mean())
    fit_ident = float(case.identity.rmse_bq_per_ml[mask].mean())
    assert fit_true < 0.7 * fit_ident  # the paper's voxel-wise fit RMSE


def _curve_sampling_error(case: Case, compartment: str) -> float:
    """Relative error of eq. 6 on the 4 samples of a compartment's noiseless true curve."""
    comp = case.voi_truth["compartments"][compartment]
    coef, rate = np.array(comp["coef_bq_per_ml"]), np.array(comp["rate_per_h"])
    hours = case.manifest.hours
    lam = case.voi_truth["lambda_phys_per_h"]
    curve = (coef[None] * np.exp(-(rate[None] + lam) * hours[:, None])).sum(axis=1)
    return float(tia_from_curves(curve[:, None], hours).tia[0]) * 1e-6 / comp["tia_mbqh_per_ml"] - 1.0


def test_voi_tia_from_true_activity_matches_truth(case: Case) -> None:
    names = label_names_from_json(case.dir / "truth" / "tia_voi.json")
    assert names[4] == "liver" and names[11] == "tumour_1"
    vois = phantom_vois(case.labels, names)
    rows = {r["voi"]: r for r in voi_table(case.activity, case.manifest.hours, case.labels,
                                           compute_tia(case.activity, case.manifest.hours, case.vv), vois=vois)}
    truth = {v["name"]: v for v in case.voi_truth["vois"]}
    assert "kidneys" in rows and rows["kidneys"]["labels"] == "6+7"
    # tolerance: spleen voxels at 7.74 mm mix in the kinetics of its neighbours (measured 2.7 pp)
    compartments = {"kidneys": ("kidney_cortex", 0.015), "spleen": ("spleen", 0.04),
                    "bladder": ("bladder", 0.015)}
    compartments.update({n: (n, 0.015) for n in rows if n.startswith("tumour_")})
    for name, (comp, tol) in compartments.items():
        row = rows[name]
        mask = np.isin(case.labels, [int(v) for v in row["labels"].split("+")])
        map_sum = float(case.tia_true[mask].sum()) * case.vv  # true TIA on the same voxels
        sampling = _curve_sampling_error(case, comp)
        # VOI TIA over the true TIA of the same voxels = eq. 6 error on the organ's true curve (4 samples)
        assert row["tia_voi_mbqh"] / map_sum - 1 == pytest.approx(sampling, abs=tol), name
        # VOI mean curve of a homogeneous organ: VOI TIA = sum of voxel TIAs
        assert row["percent_difference"] == pytest.approx(0.0, abs=1.0), name
    # the time sampling alone costs the kidneys and bladder less than 5 %
    for name in ("kidneys", "bladder"):
        mask = np.isin(case.labels, [int(v) for v in rows[name]["labels"].split("+")])
        assert abs(rows[name]["tia_voi_mbqh"] / (float(case.tia_true[mask].sum()) * case.vv) - 1) < 0.05
    # against the fine-anatomy truth the error is explained by the two effects (any seed) ...
    for name in ("kidneys", "spleen", "bladder"):
        mask = np.isin(case.labels, [int(v) for v in rows[name]["labels"].split("+")])
        labelling = float(case.tia_true[mask].sum()) * case.vv / truth[name]["tia_mbqh"] - 1
        sampling = _curve_sampling_error(case, compartments[name][0])
        err = rows[name]["tia_voi_mbqh"] / truth[name]["tia_mbqh"] - 1
        assert abs(err) <= abs(labelling) + abs(sampling) + 0.03, name
    # ... and for this patient (seed 0) stays within 12 % for the large organs
    for name in ("kidneys", "liver", "spleen", "bladder"):
        err = rows[name]["tia_voi_mbqh"] / truth[name]["tia_mbqh"] - 1
        assert abs(err) < 0.12, f"{name}: VOI TIA {rows[name]['tia_voi_mbqh']:.0f} vs truth " \
                                f"{truth[name]['tia_mbqh']:.0f} MBq*h ({100 * err:+.1f} %)"


def test_corx_tia_end_to_end_on_truly_warped_spects(case: Case, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    ref_img = nib.load(str(case.manifest.reference_timepoint.spect))
    warped_dir = case.dir / "warped_true"
    entries = []
    for i, tp in enumerate(case.manifest.timepoints):
        save_image(case.warped[i], ref_img.affine, warped_dir / f"spect_{tp.id}.nii.gz", overwrite=True,
                   dtype=np.float32)
        entries.append({"id": tp.id, "hours": tp.hours, "ct": tp.ct.name, "spect": f"warped_true/spect_{tp.id}.nii.gz"})
    manifest_path = case.dir / "patient_warped_true.json"
    manifest_path.write_text(json.dumps({
        "patient_id": case.manifest.patient_id, "radionuclide": "Lu-177",
        "injected_activity_mbq": case.manifest.injected_activity_mbq, "reference": case.manifest.reference,
        "timepoints": entries, "labels": "truth/labels_ref.nii.gz"}))
    out = tmp_path / "tia_out"
    assert main(["tia", str(manifest_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kidneys" in printed and "wrote" in printed
    for name in ("tia.nii.gz", "tia_rmse.nii.gz", "tia_rule.nii.gz", "dose.nii.gz", "tia_model.nii.gz",
                 "tia_multimodel.nii.gz"):
        img = nib.load(str(out / name))
        assert img.shape == ref_img.shape, name
        np.testing.assert_allclose(img.affine, ref_img.affine, atol=1e-4, err_msg=name)
    tia = np.asarray(nib.load(str(out / "tia.nii.gz")).dataobj)
    np.testing.assert_allclose(tia, case.true_reg.tia_mbqh_per_ml, rtol=1e-5, atol=1e-6)
    assert case.rel_rmse(tia, ORGANS["kidneys"]) < BOUNDS["kidneys"]
    rows = {r["voi"]: r for r in csv.DictReader((out / "voi.csv").open())}
    assert {"kidneys", "liver", "spleen", "bladder"} <= set(rows)
    kid = rows["kidneys"]
    assert float(kid["d2_gy"]) >= float(kid["d50_gy"]) >= float(kid["d98_gy"]) > 0
    # kidney dose: 0.08532 Gy g/(MBq h) x VOI TIA / mass; soft tissue ~1.03-1.05 g/mL
    assert float(kid["dose_voi_gy"]) == pytest.approx(
        0.08532 * float(kid["tia_voi_mbqh"]) / (1.04 * float(kid["volume_ml"])), rel=0.05)
    assert float(kid["mean_dose_gy"]) == pytest.approx(float(kid["dose_voi_gy"]), rel=0.15)
    dose = np.asarray(nib.load(str(out / "dose.nii.gz")).dataobj)
    assert np.isfinite(dose).all() and dose[case.labels == 0].max() < dose[np.isin(case.labels, (6, 7))].mean()
    # a second run needs --overwrite
    assert main(["tia", str(manifest_path), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err

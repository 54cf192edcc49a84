"""TIA columns (paper section 2.5 and Table 3, plus the phantom's true TIA).

For each method and each patient whose reference pairs were all registered, every time point's SPECT (Bq/mL) is
warped to the reference on the network grid (the reference itself with a zero field, as ``corx register`` does),
the voxel TIA is computed with :func:`corx.dosimetry.tia.compute_tia` (eq. 6) and compared per VOI (kidneys = labels
6 + 7; each tumour) with the true TIA blurred by the SPECT resolution (truth/tia_imaged.nii.gz, resampled with
labels_ref onto the network grid when the grids differ):

- ``fit_rmse_bqml``: mean over the VOI's voxels of the mono-exponential fit RMSE (the paper's voxel-wise metric;
  Bq/mL);
- ``tia_rmse``: voxel-wise RMSE of TIA against the truth in the VOI (MBq h/mL);
- ``tia_mbqh`` / ``true_mbqh`` / ``err_pct``: VOI total TIA (MBq h), the true total and the percent error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dosimetry.tia import compute_tia
from ..geometry.resample import resample_to_grid, same_grid
from ..geometry.warp import warp_image
from ..io.imageio import read_array
from ..registration.preprocess import PreprocessConfig, preprocess_pair
from .ground_truth import KIDNEYS, tumour_labels


@dataclass
class PatientSeries:
    """A patient's time points on the network grid, before warping."""

    patient_id: str
    ids: list[str]  # acquisition order
    hours: np.ndarray
    reference: str
    moving_spect: dict[str, np.ndarray]  # id -> Bq/mL on the network grid (moving input of the pair ref -> id)
    affine: np.ndarray
    truth_tia: np.ndarray  # MBq h/mL, network grid
    labels: np.ndarray  # labels_ref on the network grid


def load_series(patient_dir: str | Path, config: PreprocessConfig, pairable: list[str]) -> PatientSeries:
    """Preprocess every pairable time point of a patient against its reference (network grid)."""
    folder = Path(patient_dir)
    man = json.loads((folder / "patient.json").read_text())
    ref = man["reference"]
    tps = [t for t in sorted(man["timepoints"], key=lambda t: float(t["hours"])) if t["id"] in pairable]
    by_id = {t["id"]: t for t in tps}
    spects: dict[str, np.ndarray] = {}
    affine = None
    for t in tps:
        prepared = preprocess_pair(folder / by_id[ref]["ct"], folder / t["ct"], folder / by_id[ref]["spect"],
                                   folder / t["spect"], config)
        spects[t["id"]] = prepared.moving_spect_bqml
        affine = prepared.affine
    assert affine is not None
    shape = next(iter(spects.values())).shape
    tia, tia_aff = read_array(folder / "truth" / "tia_imaged.nii.gz")
    labels, lab_aff = read_array(folder / "truth" / "labels_ref.nii.gz", dtype=np.uint8)
    if not same_grid(tia.shape, tia_aff, shape, affine):
        tia = resample_to_grid(tia, tia_aff, shape, affine, order=1)
        labels = resample_to_grid(labels, lab_aff, shape, affine, order=0)
    return PatientSeries(patient_id=str(man["patient_id"]), ids=[t["id"] for t in tps],
                         hours=np.array([float(t["hours"]) for t in tps]), reference=ref, moving_spect=spects,
                         affine=affine, truth_tia=tia.astype(np.float32), labels=labels.astype(np.uint8))


def vois_of(labels: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(name, kind, mask): kidneys, then each tumour."""
    out = []
    kidneys = np.isin(labels, KIDNEYS)
    if kidneys.any():
        out.append(("kidneys", "kidneys", kidneys))
    out += [(f"tumour_{k - 10}", "tumours", labels == k) for k in tumour_labels(labels)]
    return out


def series_tia(series: PatientSeries, fields: dict[str, np.ndarray], threads: int | None = None
               ) -> list[dict[str, Any]]:
    """Per-VOI TIA rows of one method on one patient; ``fields`` maps every non-reference id to its field."""
    frames = []
    for tid in series.ids:
        spect = series.moving_spect[tid]
        frames.append(spect if tid == series.reference else warp_image(spect, fields[tid]))
    activity = np.maximum(np.stack(frames), np.float32(0.0))
    voxel_ml = float(abs(np.linalg.det(series.affine[:3, :3]))) / 1000.0
    res = compute_tia(activity, series.hours, voxel_ml, threads=threads)
    rows = []
    for name, kind, mask in vois_of(series.labels):
        tia, truth = res.tia_mbqh_per_ml[mask].astype(np.float64), series.truth_tia[mask].astype(np.float64)
        total, true_total = float(tia.sum() * voxel_ml), float(truth.sum() * voxel_ml)
        rows.append({"patient_id": series.patient_id, "voi": name, "kind": kind, "n_voxels": int(mask.sum()),
                     "tia_mbqh": total, "true_mbqh": true_total,
                     "err_pct": 100.0 * (total - true_total) / true_total if true_total > 0 else float("nan"),
                     "tia_rmse": float(np.sqrt(np.mean((tia - truth) ** 2))),
                     "fit_rmse_bqml": float(res.rmse_bq_per_ml[mask].mean())})
    return rows

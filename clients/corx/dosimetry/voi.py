"""VOI (organ-based) TIA from a label map and its comparison with the voxel TIA (the paper's Table 3).

For each VOI the mean time-activity curve (Bq/mL) of its voxels gets the same eq.-6 rule as a voxel
(corx.dosimetry.tia.tia_from_curves); VOI TIA [MBq h] = TIA per mL of the mean curve x VOI volume. It is compared
with the sum of the voxel TIAs over the VOI: percent_difference = 100 (voxel sum - VOI) / VOI.

Columns of a row: voi, labels ("6+7"), n_voxels, volume_ml, tia_voi_mbqh, tia_voxel_sum_mbqh,
percent_difference, voi_rule (eq.-6 rule code of the mean curve), voi_lambda_eff_per_h, voi_fit_rmse_bq_per_ml,
mean_voxel_rmse_bq_per_ml; with a multi-model map: voi_model, tia_voi_multimodel_mbqh,
tia_voxel_sum_multimodel_mbqh; with a density map: mass_g, dose_voi_gy (LED dose of the VOI TIA in the VOI
mass); with a dose map: mean_dose_gy (voxel average), d2_gy, d50_gy, d98_gy (minimum dose of the hottest 2, 50,
98 % of the VOI voxels).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorxError
from ..io.imageio import atomic_path
from ..io.labels import label_mask
from .dose import dvh_metrics
from .kinetics_models import MODEL_NAMES, models_from_curves
from .physics import DOSE_GY_G_PER_MBQH, LU177_LAMBDA_PER_H
from .tia import TiaResult, tia_from_curves

#: CONVENTIONS.md label numbers; kidneys (cortex 6 + medulla 7) form one VOI.
CONVENTION_LABELS: dict[int, str] = {1: "body", 2: "muscle", 3: "lungs", 4: "liver", 5: "spleen",
                                     6: "kidney_cortex", 7: "kidney_medulla", 8: "bladder", 9: "bone",
                                     10: "bowel"}


@dataclass(frozen=True)
class Voi:
    """A named volume of interest made of one or more label values."""

    name: str
    labels: tuple[int, ...]


def default_vois(label_map: np.ndarray) -> list[Voi]:
    """One VOI per non-zero label present, named 'label_<n>'."""
    present = np.unique(label_map)
    return [Voi(f"label_{int(v)}", (int(v),)) for v in present if v != 0]


def phantom_vois(label_map: np.ndarray, names: dict[int, str]) -> list[Voi]:
    """Phantom VOIs: labels present, named from ``names``; labels 6 and 7 merged into 'kidneys'."""
    present = [int(v) for v in np.unique(label_map) if v != 0]
    vois: list[Voi] = []
    kidneys = tuple(v for v in (6, 7) if v in present)
    for v in present:
        if v in (6, 7):
            if v == kidneys[0]:
                vois.append(Voi("kidneys", kidneys))
            continue
        vois.append(Voi(names.get(v, f"label_{v}"), (v,)))
    return vois


def label_names_from_json(path: str | os.PathLike) -> dict[int, str]:
    """Label number -> name from a phantom's truth/tia_voi.json (several layouts accepted); {} if none."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorxError(f"{path}: not a readable JSON file ({exc})") from exc
    names: dict[int, str] = {}
    if not isinstance(raw, dict):
        return names
    for key in ("label_names", "labels"):
        table = raw.get(key)
        if isinstance(table, dict):
            for k, v in table.items():
                if str(k).lstrip("-").isdigit() and isinstance(v, str):
                    names[int(k)] = v
                elif isinstance(v, int) and isinstance(k, str):
                    names[v] = k
    for key in ("vois", "organs", "regions"):
        entries = raw.get(key)
        items = entries.items() if isinstance(entries, dict) else (
            ((e.get("name"), e) for e in entries if isinstance(e, dict)) if isinstance(entries, list) else ())
        for name, entry in items:
            if not isinstance(entry, dict) or not isinstance(name, str):
                continue
            labels = entry.get("labels", entry.get("label"))
            if isinstance(labels, int):
                names.setdefault(labels, name)
            elif isinstance(labels, list) and len(labels) == 1 and isinstance(labels[0], int):
                names.setdefault(labels[0], name)
    return names


def values_by_voi(values: dict[str, float], vois: Sequence[Voi], what: str) -> np.ndarray:
    """``values`` ({VOI name: value}) as one float per VOI of ``vois``, NaN for VOIs not named; CorxError naming
    ``what`` and the known VOIs for a name that is not a VOI."""
    known = {voi.name for voi in vois}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CorxError(f"{what}: unknown VOI name(s) {unknown}; the VOIs are {sorted(known)}")
    return np.array([values.get(voi.name, math.nan) for voi in vois], dtype=np.float64)


def voi_value_map(values: dict[str, float], label_map: np.ndarray, vois: Sequence[Voi], what: str) -> np.ndarray:
    """A float64 map on the label grid with each named VOI's value in its voxels, NaN elsewhere."""
    out = np.full(np.shape(label_map), np.nan, dtype=np.float64)
    for voi, value in zip(vois, values_by_voi(values, vois, what), strict=True):
        if math.isfinite(value):
            out[label_mask(label_map, voi.labels)] = value
    return out


def _sums_by_label(values: np.ndarray, labels: np.ndarray, n_bins: int) -> np.ndarray:
    return np.bincount(labels, weights=values, minlength=n_bins)


def voi_table(activity: np.ndarray, hours: Sequence[float] | np.ndarray, label_map: np.ndarray,
              tia: TiaResult, vois: Sequence[Voi] | None = None, dose_gy: np.ndarray | None = None,
              density: np.ndarray | None = None, multimodel_tia_mbqh_per_ml: np.ndarray | None = None,
              lambda_phys: float = LU177_LAMBDA_PER_H, min_density: float = 0.1,
              prior_half_life_h: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Table 3 rows per VOI (see module docstring); ``activity`` (T, X, Y, Z) Bq/mL on the label grid.

    With one time point the VOI's mean value gets the single-time-point rule (corx.dosimetry.tia), with the VOI's
    ``prior_half_life_h`` ({VOI name: h}) where given.

    Optional columns: dose (mass from ``density`` g/mL, LED VOI dose and DVH metrics of ``dose_gy``) and the
    multi-model voxel sum. Raises CorxError for a grid mismatch, an empty label map or a VOI with no voxel.
    """
    labels = np.asarray(label_map)
    if labels.shape != activity.shape[1:]:
        raise CorxError(f"label map shape {labels.shape} does not match the activity grid {activity.shape[1:]}")
    if not np.issubdtype(labels.dtype, np.integer) and (
            not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels))):
        raise CorxError("label map must contain integer labels")
    lab = labels.astype(np.int64).ravel()
    if lab.min() < 0:
        raise CorxError("label map contains negative labels")
    if not np.any(lab):
        raise CorxError("label map contains no labelled voxel (all 0)")
    vois = default_vois(labels) if vois is None else list(vois)
    n_bins = int(lab.max()) + 1
    counts = np.bincount(lab, minlength=n_bins)
    for voi in vois:
        if sum(int(counts[v]) if v < n_bins else 0 for v in voi.labels) == 0:
            raise CorxError(f"VOI '{voi.name}': label(s) {list(voi.labels)} not present in the label map")
    vv = tia.voxel_volume_ml
    frame_sums = np.stack([_sums_by_label(activity[i].ravel(), lab, n_bins) for i in range(activity.shape[0])])
    tia_sums = _sums_by_label(tia.tia_mbqh_per_ml.ravel(), lab, n_bins)
    rmse_sums = _sums_by_label(tia.rmse_bq_per_ml.ravel(), lab, n_bins)
    mm_sums = (_sums_by_label(multimodel_tia_mbqh_per_ml.ravel(), lab, n_bins)
               if multimodel_tia_mbqh_per_ml is not None else None)
    mass_sums = (_sums_by_label(np.maximum(density, min_density).ravel(), lab, n_bins)
                 if density is not None else None)

    def pick(arr: np.ndarray, voi: Voi) -> float:
        return float(sum(arr[..., v] for v in voi.labels))

    n_vox = np.array([pick(counts, v) for v in vois])
    curves = np.stack([[pick(frame_sums[i], v) for v in vois] for i in range(activity.shape[0])]) / n_vox
    voi_fit = tia_from_curves(curves, hours, lambda_phys=lambda_phys,
                              max_tia_ratio=float(tia.params.get("max_tia_ratio", 2.0)),
                              head=str(tia.params.get("head", "exponential")),
                              prior_half_life_h=(values_by_voi(prior_half_life_h, vois, "prior half-lives")
                                                 if prior_half_life_h else None))
    voi_mm = models_from_curves(curves, hours, lambda_phys=lambda_phys) if mm_sums is not None else None
    rows: list[dict[str, Any]] = []
    for i, voi in enumerate(vois):
        volume = n_vox[i] * vv
        tia_voi = float(voi_fit.tia[i]) * 1e-6 * volume
        tia_vox = pick(tia_sums, voi) * vv
        row: dict[str, Any] = {
            "voi": voi.name, "labels": "+".join(map(str, voi.labels)), "n_voxels": int(n_vox[i]),
            "volume_ml": volume, "tia_voi_mbqh": tia_voi, "tia_voxel_sum_mbqh": tia_vox,
            "percent_difference": 100.0 * (tia_vox - tia_voi) / tia_voi if tia_voi > 0 else math.nan,
            "voi_rule": int(voi_fit.rule[i]), "voi_lambda_eff_per_h": float(voi_fit.lambda_eff[i]),
            "voi_fit_rmse_bq_per_ml": float(voi_fit.rmse[i]),
            "tia_fit_sd_percent": (100.0 * float(voi_fit.tia_sd[i]) / float(voi_fit.tia[i])
                                   if voi_fit.tia_sd is not None and voi_fit.tia[i] > 0 else math.nan),
            "mean_voxel_rmse_bq_per_ml": pick(rmse_sums, voi) / n_vox[i],
        }
        if mm_sums is not None and voi_mm is not None:
            row["voi_model"] = MODEL_NAMES[int(voi_mm.model[i])]
            row["tia_voi_multimodel_mbqh"] = float(voi_mm.tia[i]) * 1e-6 * volume
            row["tia_voxel_sum_multimodel_mbqh"] = pick(mm_sums, voi) * vv
        if mass_sums is not None:
            mass = pick(mass_sums, voi) * vv
            row["mass_g"] = mass
            row["dose_voi_gy"] = DOSE_GY_G_PER_MBQH * tia_voi / mass if mass > 0 else math.nan
        if dose_gy is not None:
            mask = label_mask(labels, voi.labels)
            row.update(dvh_metrics(dose_gy[mask]))
        rows.append(row)
    return rows


def write_voi_csv(rows: Sequence[dict[str, Any]], target: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the VOI rows as CSV atomically (columns in the order of the first row)."""
    if not rows:
        raise CorxError(f"{target}: no VOI rows to write")
    columns = list(rows[0].keys())
    with atomic_path(target, overwrite=overwrite) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return Path(target)

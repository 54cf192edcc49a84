"""Error against a phantom's ground truth: TIA per organ vs the true TIA (truth/tia_voi.json, tia_imaged).

For each VOI of truth/tia_voi.json (kidney cortex and medulla only as 'kidneys'): the analytic true TIA inside
the field of view, the imaged truth (truth/tia_imaged.nii.gz, the true TIA blurred by the SPECT resolution)
summed over the VOI's voxels, and our voxel TIA summed over the same voxels, with and without registration.
``voxel_mae_percent`` is the mean absolute voxel difference to the imaged truth inside the VOI, as a percentage
of the VOI's mean imaged truth: it is what misregistration changes most.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..dosimetry.tia import compute_tia
from ..errors import CorxError
from ..io.inputs import array_on_grid
from ..io.labels import label_mask

TRUTH_FILES = ("tia_voi.json", "tia_imaged.nii.gz")


def has_truth(truth_dir: Path) -> bool:
    """True when the phantom's TIA truth files are present."""
    return all((truth_dir / name).is_file() for name in TRUTH_FILES)


def truth_applies(truth_dir: Path, reference: str) -> bool:
    """True when the phantom's truth is present and defined on the manifest's reference time point (the truth
    maps lie in the frame of the phantom's reference, e.g. 4 h; a manifest with another reference, such as a
    single later time point, cannot be compared voxel by voxel)."""
    if not has_truth(truth_dir):
        return False
    try:
        truth_reference = json.loads((truth_dir / "tia_voi.json").read_text()).get("reference")
    except (OSError, ValueError):
        return False
    return truth_reference is None or str(truth_reference) == reference


def imaged_truth(truth_dir: Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """truth/tia_imaged.nii.gz (MBq*h/mL) on the reference grid."""
    return array_on_grid(truth_dir / "tia_imaged.nii.gz", shape, affine, "true TIA map").astype(np.float32)


def _vois(raw: dict[str, Any]) -> list[dict[str, Any]]:
    entries = [v for v in raw.get("vois", []) if isinstance(v, dict) and v.get("labels")]
    sets = [set(v["labels"]) for v in entries]
    # drop a VOI whose labels are a strict part of another one (kidney cortex/medulla inside 'kidneys')
    return [v for v, s in zip(entries, sets, strict=True) if not any(s < other for other in sets)]


def truth_voi_mask(truth_dir: Path, labels: np.ndarray) -> np.ndarray:
    """The voxels of ``labels`` inside any VOI of truth/tia_voi.json: where the comparison reads a TIA map."""
    raw = json.loads((truth_dir / "tia_voi.json").read_text())
    return label_mask(labels, sorted({int(v) for voi in _vois(raw) for v in voi["labels"]}))


def tia_inside(frames: list[np.ndarray], hours: list[float], voxel_volume_ml: float, inside: np.ndarray,
               prior_half_life_h: np.ndarray | None = None) -> np.ndarray:
    """Voxel TIA (MBq*h/mL, as :func:`~corx.dosimetry.tia.compute_tia`) of the activity ``frames`` at the voxels
    ``inside`` only, zero elsewhere: the fit is per voxel, so the values inside equal those of the whole map."""
    out = np.zeros(inside.shape, np.float32)
    if not inside.any():
        return out
    curves = np.stack([np.asarray(f)[inside] for f in frames])[:, :, None, None]
    prior = None if prior_half_life_h is None else prior_half_life_h[inside][:, None, None]
    out[inside] = compute_tia(curves, hours, voxel_volume_ml, prior_half_life_h=prior).tia_mbqh_per_ml[:, 0, 0]
    return out


def _pct(value: float, ref: float) -> float:
    return 100.0 * (value - ref) / ref if ref > 0 else math.nan


def compare_with_truth(truth_dir: Path, labels: np.ndarray, shape: tuple[int, ...], affine: np.ndarray,
                       tia: np.ndarray, tia_unregistered: np.ndarray | None,
                       imaged: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per-VOI rows (MBq*h, %) comparing ``tia`` (MBq*h/mL, reference grid) with the phantom truth; ``imaged``: the
    imaged truth already on the grid (read here otherwise)."""
    raw = json.loads((truth_dir / "tia_voi.json").read_text())
    if imaged is None:
        imaged = imaged_truth(truth_dir, shape, affine)
    if labels.shape != tuple(shape):
        raise CorxError("the label map is not on the reference SPECT grid")
    vv = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    rows = []
    for voi in _vois(raw):
        mask = label_mask(labels, voi["labels"])
        n = int(mask.sum())
        if n == 0:
            continue
        truth_vox = imaged[mask].astype(np.float64)
        ours = tia[mask].astype(np.float64)
        row: dict[str, Any] = {
            "voi": str(voi.get("name")), "labels": "+".join(str(v) for v in voi["labels"]), "volume_ml": n * vv,
            "true_tia_mbqh": float(voi.get("tia_mbqh", math.nan)),
            "imaged_true_tia_mbqh": float(truth_vox.sum() * vv), "tia_mbqh": float(ours.sum() * vv),
        }
        mean_truth = float(truth_vox.mean())
        row["error_vs_imaged_percent"] = _pct(row["tia_mbqh"], row["imaged_true_tia_mbqh"])
        row["error_vs_true_percent"] = _pct(row["tia_mbqh"], row["true_tia_mbqh"])
        row["voxel_mae_percent"] = (100.0 * float(np.abs(ours - truth_vox).mean()) / mean_truth
                                    if mean_truth > 0 else math.nan)
        if tia_unregistered is not None:
            unreg = tia_unregistered[mask].astype(np.float64)
            row["unregistered_tia_mbqh"] = float(unreg.sum() * vv)
            row["unregistered_error_vs_imaged_percent"] = _pct(row["unregistered_tia_mbqh"],
                                                               row["imaged_true_tia_mbqh"])
            row["unregistered_voxel_mae_percent"] = (100.0 * float(np.abs(unreg - truth_vox).mean()) / mean_truth
                                                     if mean_truth > 0 else math.nan)
        rows.append(row)
    return rows


def truth_csv(rows: list[dict[str, Any]]) -> str:
    """The comparison rows as CSV text."""
    if not rows:
        return ""
    columns = list(rows[0].keys())
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    return "\n".join(lines) + "\n"

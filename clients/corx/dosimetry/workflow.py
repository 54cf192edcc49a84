"""The TIA computation shared by `corx tia` and `corx pipeline`: TIA, fit RMSE, rule, multi-model, dose and BED maps
and the VOI table from SPECT arrays on one grid, and the writers of its outputs.

Outputs in DIR (all images on the reference SPECT grid with its affine):

=========================  ===========================================================================
tia.nii.gz                 eq.-6 TIA, MBq*h/mL (float32)
tia_rmse.nii.gz            mono-exponential fit RMSE, Bq/mL (float32)
tia_sd.nii.gz              standard deviation of the TIA from the fit's covariance, MBq*h/mL (float32; NaN where
                           the voxel was not integrated by its mono-exponential fit or with < 3 time points)
tia_rule.nii.gz            uint8 rule codes: 0 background, 1 mono-exp, 2 trapezoid (lambda_eff <= lambda_phys),
                           3 trapezoid (fit failed), 4 trapezoid (mono-exp TIA excessive), 5 single time point
                           Hänscheid, 6 single time point with a prior T_eff; see corx.dosimetry.tia.TiaRule
dose.nii.gz                absorbed dose, Gy (float32), by --dose: 'dvk' (default, 177Lu kernel convolution with
                           density scaling) or 'led' (local deposition); mass from the reference CT; see
                           corx.dosimetry.dose
dose_led.nii.gz            (--dose dvk) the LED dose, Gy, for comparison
dose_dvk.nii.gz            (--dose led) the kernel dose, Gy, for comparison
tia_model.nii.gz           (>= 4 time points) uint8 selected model: 0 below threshold, 1 mono-exp,
                           2 uptake + physical decay, 3 uptake-washout, 4 bi-exp, 5 none (trapezoid)
tia_multimodel.nii.gz      (>= 4 time points) multi-model TIA, MBq*h/mL
voi.csv                    (labels given) VOI TIA vs voxel sum, dose metrics; see corx.dosimetry.voi
tia_summary.json           parameters, code tables, counts, VOI rows, timings
=========================  ===========================================================================
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from nibabel.affines import voxel_sizes

from ..errors import CorxError
from ..io.concurrency import concurrently, submit
from ..io.dicom_outputs import DicomContent, write_dicom_outputs
from ..io.imageio import atomic_path, save_image, save_json
from ..io.labels import label_mask
from .bed import BedResult, bed_map, load_radiobiology, voi_bed_columns
from .dose import DoseResult, cumulative_dvh, dose_from_ct
from .kinetics_models import MultiModelResult, compute_tia_multimodel
from .tia import TiaResult, compute_tia
from .uncertainty import voi_uncertainty_columns
from .voi import Voi, default_vois, voi_table, voi_value_map, write_voi_csv

DEFAULT_DOSE_MODE = "dvk"
OUTPUT_NAMES = ("tia.nii.gz", "tia_rmse.nii.gz", "tia_sd.nii.gz", "tia_rule.nii.gz", "dose.nii.gz", "dose_led.nii.gz",
                "dose_dvk.nii.gz", "bed.nii.gz", "tia_model.nii.gz",
                "tia_multimodel.nii.gz", "voi.csv", "dvh.csv", "dose.dcm", "voi_seg.dcm", "voi_rtstruct.dcm",
                "tia_summary.json")

T = TypeVar("T")


@dataclass
class TiaOutputs:
    """Everything `corx tia` computes, before writing."""

    tia: TiaResult
    multimodel: MultiModelResult | None = None
    dose: DoseResult | None = None
    voi_rows: list[dict[str, Any]] | None = None
    dvh: tuple[np.ndarray, dict[str, np.ndarray]] | None = None  # (dose bins Gy, {VOI: % volume >= dose})
    bed: BedResult | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    labels: np.ndarray | None = None  # the label map and VOIs of ``voi_rows`` (for the DICOM SEG)
    vois: list[Voi] | None = None


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Voxel volume (mL) of a grid from its affine."""
    return float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0


def run_tia_on_arrays(activity: np.ndarray, hours: Sequence[float] | np.ndarray, affine: np.ndarray, *,
                      ct: tuple[np.ndarray, np.ndarray] | None = None, labels: np.ndarray | None = None,
                      vois: Sequence[Voi] | None = None, names: Sequence[str] | None = None,
                      multimodel: bool | None = None, threads: int | None = None,
                      radiobiology: str | os.PathLike | None = None,
                      prior_half_life_h: dict[str, float] | None = None, dose_mode: str = DEFAULT_DOSE_MODE,
                      calibration_sd_percent: float = 0.0, **tia_options: Any) -> TiaOutputs:
    """The whole `corx tia` computation on registered arrays.

    Args:
        activity: (T, X, Y, Z) Bq/mL, all frames on the grid ``affine`` (registered to the reference).
        hours: acquisition times (h), strictly increasing.
        affine: the grid's voxel-to-world affine (gives the voxel volume).
        ct: optional (HU array, CT affine) for the dose map.
        labels: optional label map on the activity grid for the VOI table (``vois`` default: one per label).
        names: one name per frame (files) for error messages.
        multimodel: multi-model fit (default: when there are >= 4 time points).
        threads: worker threads.
        radiobiology: JSON file overriding the BED tissue parameters (corx/data/radiobiology.json).
        prior_half_life_h: single time point: {VOI name: prior effective half-life, h} (needs ``labels``);
            elsewhere Hänscheid's T_eff = t.
        dose_mode: which dose is ``dose`` ('dvk' or 'led'); the other is computed too, for comparison.
        calibration_sd_percent: relative SD of the calibration factor, for the VOI uncertainty columns.
        tia_options: passed to corx.dosimetry.tia.compute_tia (max_tia_ratio, head, min_activity, ...).
    """
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    vv = voxel_volume_ml(affine)
    if labels is not None and vois is None:
        vois = default_vois(labels)
    prior_map = prior_half_life_map(prior_half_life_h, labels, vois)
    tia = compute_tia(activity, hours, vv, names=names, threads=threads, prior_half_life_h=prior_map,
                      **tia_options)
    times["tia_monoexp"] = time.perf_counter() - t0
    out = TiaOutputs(tia=tia, timings_s=times, labels=labels, vois=list(vois) if vois is not None else None)
    if multimodel is None:
        multimodel = len(hours) >= 4
    # the dose needs only the eq.-6 TIA: it is computed on a worker thread beside the multi-model fit, whose
    # threads leave a core partly idle (their two timings overlap)
    dose_job = (submit(_timed, partial(dose_from_ct, tia.tia_mbqh_per_ml, affine, ct[0], ct[1], mode=dose_mode,
                                       all_modes=True)) if ct is not None else None)
    if multimodel:
        t0 = time.perf_counter()
        out.multimodel = compute_tia_multimodel(activity, hours, vv, names=names, threads=threads)
        times["tia_multimodel"] = time.perf_counter() - t0
    if dose_job is not None:
        out.dose, times["dose"] = dose_job.result()
        t0 = time.perf_counter()
        mm = out.multimodel
        out.bed = bed_map(out.dose.dose_gy, tia.lambda_eff_per_h, labels, vois or (),
                          load_radiobiology(radiobiology),
                          multimodel=(mm.model, mm.components) if mm is not None and mm.components is not None
                          else None)
        times["bed"] = time.perf_counter() - t0
    if labels is not None:
        t0 = time.perf_counter()
        out.voi_rows = voi_table(activity, hours, labels, tia, vois=vois,
                                 dose_gy=out.dose.dose_gy if out.dose else None,
                                 density=out.dose.density if out.dose else None,
                                 multimodel_tia_mbqh_per_ml=(out.multimodel.tia_mbqh_per_ml
                                                             if out.multimodel else None),
                                 prior_half_life_h=prior_half_life_h)
        voxel_mm = voxel_sizes(np.asarray(affine, float))
        masks = {voi.name: label_mask(labels, voi.labels) for voi in vois or ()}
        for row, voi in zip(out.voi_rows, vois or (), strict=True):
            mask = masks[voi.name]
            row.update(voi_uncertainty_columns(row["tia_fit_sd_percent"], mask, voxel_mm, calibration_sd_percent))
            if out.dose is not None:
                row["dose_mode"] = out.dose.mode
                row.update({f"mean_dose_{m}_gy": float(d[mask].mean()) for m, d in sorted(out.dose.by_mode.items())})
            if out.bed is not None:
                row.update(voi_bed_columns(row, voi, out.bed.bed_gy, labels, out.bed.params))
        if out.dose is not None:
            out.dvh = cumulative_dvh({name: out.dose.dose_gy[mask] for name, mask in masks.items()})
        times["voi"] = time.perf_counter() - t0
    return out


def _timed(call: Callable[[], T]) -> tuple[T, float]:
    """``call()`` and its wall time (s)."""
    t0 = time.perf_counter()
    return call(), time.perf_counter() - t0


def prior_half_life_map(priors: dict[str, float] | None, labels: np.ndarray | None,
                        vois: Sequence[Voi] | None) -> np.ndarray | None:
    """The per-voxel prior effective half-life map (NaN outside the named VOIs), or None without priors."""
    if not priors:
        return None
    if labels is None or vois is None:
        raise CorxError("prior effective half-lives per VOI need a label map (the manifest's 'labels')")
    return voi_value_map(priors, labels, vois, "prior_effective_half_life_h")


def write_dvh_csv(bins: np.ndarray, curves: dict[str, np.ndarray], target: Path, overwrite: bool = False) -> Path:
    """Cumulative DVHs as CSV: ``dose_gy`` then one column per VOI (% of its volume receiving >= that dose)."""
    names = list(curves)
    with atomic_path(target, overwrite=overwrite) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dose_gy", *names])
        for i, dose in enumerate(bins):
            writer.writerow([f"{dose:.6g}", *(f"{curves[n][i]:.6g}" for n in names)])
    return Path(target)


def dicom_content(result: TiaOutputs) -> DicomContent:
    """What the DICOM files of a `corx tia` result hold (a few of its arrays, the VOIs as plain pairs)."""
    return DicomContent(dose_gy=result.dose.dose_gy if result.dose else None,
                        dose_mode=result.dose.mode if result.dose else "", labels=result.labels,
                        vois=[(voi.name, tuple(voi.labels)) for voi in result.vois] if result.vois else None)


def write_outputs(result: TiaOutputs, affine: np.ndarray, out: Path, overwrite: bool = False,
                  extra: dict[str, Any] | None = None, dicom_uids: dict[str, str] | None = None) -> list[Path]:
    """Write the maps, VOI table, DICOM dose/SEG and summary into ``out`` (atomic, no clobbering without
    ``overwrite``); ``dicom_uids`` see :func:`write_dicom_outputs`. The three parts are :func:`write_maps`,
    :func:`write_dicom_outputs` and :func:`write_summary` (the pipeline runs the first two in different processes)."""
    maps = write_maps(result, affine, out, overwrite)
    dicom = write_dicom_outputs(dicom_content(result), affine, out, str((extra or {}).get("patient_id", "corx")),
                                dicom_uids, overwrite)
    return write_summary(result, out, maps, dicom, overwrite, extra, dicom_uids)


def write_maps(result: TiaOutputs, affine: np.ndarray, out: Path, overwrite: bool = False) -> list[Path]:
    """The NIfTI maps, ``voi.csv`` and ``dvh.csv`` (atomic; no clobbering without ``overwrite``)."""
    images: list[tuple[np.ndarray, str, Any]] = [
        (result.tia.tia_mbqh_per_ml, "tia.nii.gz", np.float32),
        (result.tia.rmse_bq_per_ml, "tia_rmse.nii.gz", np.float32),
        (result.tia.rule, "tia_rule.nii.gz", np.uint8),
    ]
    if result.tia.tia_sd_mbqh_per_ml is not None:
        images.append((result.tia.tia_sd_mbqh_per_ml, "tia_sd.nii.gz", np.float32))
    if result.dose is not None:
        images.append((result.dose.dose_gy, "dose.nii.gz", np.float32))
        images += [(dose, f"dose_{mode}.nii.gz", np.float32) for mode, dose in sorted(result.dose.by_mode.items())
                   if mode != result.dose.mode]
    if result.bed is not None:
        images.append((result.bed.bed_gy, "bed.nii.gz", np.float32))
    if result.multimodel is not None:
        images += [(result.multimodel.model, "tia_model.nii.gz", np.uint8),
                   (result.multimodel.tia_mbqh_per_ml, "tia_multimodel.nii.gz", np.float32)]
    # gzip releases the GIL: the images are compressed on worker threads at once
    written = concurrently(*(partial(save_image, data, affine, out / name, overwrite, dtype)
                             for data, name, dtype in images))
    if result.voi_rows:
        written.append(write_voi_csv(result.voi_rows, out / "voi.csv", overwrite))
    if result.dvh is not None:
        written.append(write_dvh_csv(*result.dvh, out / "dvh.csv", overwrite))
    return written


def write_summary(result: TiaOutputs, out: Path, maps: list[Path], dicom: tuple[list[Path], str | None],
                  overwrite: bool = False, extra: dict[str, Any] | None = None,
                  dicom_uids: dict[str, str] | None = None) -> list[Path]:
    """``tia_summary.json`` after the ``maps`` and the ``dicom`` (files, note) were written; with ``overwrite``,
    outputs of an earlier run that this one did not produce are removed. Returns every file written."""
    dicom_files, dicom_note = dicom
    written = [*maps, *dicom_files]
    summary = {
        **(extra or {}),
        "dicom": {"files": [p.name for p in dicom_files], "note": dicom_note,
                  "frame_of_reference_from_reference_ct": bool((dicom_uids or {}).get("FrameOfReferenceUID"))},
        "voxel_volume_ml": result.tia.voxel_volume_ml,
        "hours": result.tia.hours,
        "tia": {**result.tia.params, "rule_counts": result.tia.rule_counts(),
                "total_mbqh": float(result.tia.tia_mbqh.sum(dtype=np.float64))},
        "multimodel": ({**result.multimodel.params, "model_counts": result.multimodel.model_counts()}
                       if result.multimodel else None),
        "units": {"tia": "MBq*h/mL", "tia_rmse": "Bq/mL", "dose": "Gy", "bed": "Gy", "voi_tia": "MBq*h"},
        "dose": ({"mode": result.dose.mode, "modes_written": sorted(result.dose.by_mode),
                  "max_gy": {m: float(d.max()) for m, d in sorted(result.dose.by_mode.items())}}
                 if result.dose else None),
        "radiobiology": ({"parameters": {k: vars(v) for k, v in result.bed.params.items()},
                          "t_eff_physical_fallback_fraction": result.bed.t_eff_fallback_fraction,
                          "two_exponential_fraction": result.bed.two_exponential_fraction}
                         if result.bed else None),
        "voi": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
                for row in result.voi_rows or []],
        "timings_s": result.timings_s,
    }
    written.append(save_json(summary, out / "tia_summary.json", overwrite))
    names = {p.name for p in written}
    if overwrite:  # drop stale outputs of an earlier run that this run did not produce
        for name in OUTPUT_NAMES:
            stale = out / name
            if name not in names and stale.is_file():
                stale.unlink()
    return written

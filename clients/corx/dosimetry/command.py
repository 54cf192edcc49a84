"""`corx tia`: TIA, dose and VOI outputs from a manifest whose SPECT images are already on the reference grid.

Reads and checks the inputs (every SPECT on the reference SPECT grid, the label map on it too), runs
:func:`corx.dosimetry.workflow.run_tia_on_arrays` and writes with :func:`corx.dosimetry.workflow.write_outputs`
(the output table is in that module's docstring).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..errors import CorxError
from ..io.activity import clip_small_negatives
from ..io.dicom import study_uids
from ..io.imageio import load_image, read_array
from ..io.manifest import Manifest, load_manifest
from .dose import parse_dose_mode
from .tia import RULE_SHORT
from .voi import Voi, default_vois, label_names_from_json, phantom_vois
from .workflow import DEFAULT_DOSE_MODE, TiaOutputs, run_tia_on_arrays, write_outputs

AFFINE_TOLERANCE_MM = 1e-3


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CorxError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CorxError(f"{out}: output folder is not empty (use --overwrite to replace its results)")


def _same_grid(shape: tuple[int, ...], affine: np.ndarray, ref_shape: tuple[int, ...],
               ref_affine: np.ndarray) -> bool:
    return tuple(shape[:3]) == tuple(ref_shape[:3]) and np.allclose(affine, ref_affine, rtol=0,
                                                                    atol=AFFINE_TOLERANCE_MM)


def load_aligned_spects(manifest: Manifest, warnings: list[str] | None = None
                        ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Stack the manifest's SPECTs (T, X, Y, Z) float32, checking each is on the reference SPECT grid.

    Small negative voxels are set to 0 and described in ``warnings``; large ones are refused
    (:func:`corx.io.activity.clip_small_negatives`)."""
    ref = manifest.reference_timepoint
    ref_img = load_image(ref.spect)
    ref_shape, ref_affine = ref_img.shape, ref_img.affine
    frames = []
    for tp in manifest.timepoints:
        img = load_image(tp.spect)
        if len(img.shape) != 3:
            raise CorxError(f"{tp.spect}: expected a 3-D SPECT, got shape {img.shape}")
        if not _same_grid(img.shape, img.affine, ref_shape, ref_affine):
            raise CorxError(f"{tp.spect}: SPECT grid (shape {img.shape}) differs from the reference SPECT "
                            f"{ref.spect.name} (shape {ref_shape}) in shape or affine; `corx tia` needs SPECT "
                            f"images already aligned to the reference grid")
        data, _ = read_array(tp.spect, dtype=np.float32)
        data, message = clip_small_negatives(data, tp.spect)
        if message is not None and warnings is not None:
            warnings.append(message)
        frames.append(data)
    return np.stack(frames), np.asarray(ref_affine, float), [str(tp.spect) for tp in manifest.timepoints]


def _load_labels(manifest: Manifest, shape: tuple[int, ...], affine: np.ndarray
                 ) -> tuple[np.ndarray, list[Voi]] | None:
    if manifest.labels is None:
        return None
    img = load_image(manifest.labels)
    if not _same_grid(img.shape, img.affine, shape, affine):
        raise CorxError(f"{manifest.labels}: label map grid (shape {img.shape}) differs from the reference SPECT "
                        f"grid (shape {shape}) in shape or affine")
    data = np.asarray(img.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(np.asarray(data, dtype=np.float64))
    data = data.astype(np.int32)
    if not np.any(data > 0):
        raise CorxError(f"{manifest.labels}: label map contains no labelled voxel (all 0)")
    names_file = manifest.truth_dir / "tia_voi.json"
    names = label_names_from_json(names_file) if names_file.is_file() else None
    vois = phantom_vois(data, names) if names is not None else default_vois(data)
    return data, vois


def run_tia(manifest: str | os.PathLike | Manifest, out: str | os.PathLike, overwrite: bool = False,
            threads: int | None = None, quiet: bool = False,
            radiobiology: str | os.PathLike | None = None, dose_mode: str = DEFAULT_DOSE_MODE) -> TiaOutputs:
    """`corx tia patient.json --out DIR`: SPECTs already on the reference grid -> TIA/dose maps + VOI table."""
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    dose_mode = parse_dose_mode(dose_mode)  # a bad option fails before any work
    out = Path(out)
    _check_out_dir(out, overwrite)
    input_warnings: list[str] = []
    activity, affine, names = load_aligned_spects(m, input_warnings)
    if not quiet:
        for message in input_warnings:
            print(f"WARNING: {message}", file=sys.stderr)
    labelled = _load_labels(m, activity.shape[1:], affine)
    ref = m.reference_timepoint
    ct_hu, ct_affine = read_array(ref.ct, dtype=np.float32)
    if ct_hu.ndim != 3:
        raise CorxError(f"{ref.ct}: expected a 3-D CT, got shape {ct_hu.shape}")
    result = run_tia_on_arrays(activity, m.hours, affine, ct=(ct_hu, ct_affine),
                               labels=labelled[0] if labelled else None, vois=labelled[1] if labelled else None,
                               names=names, threads=threads, radiobiology=radiobiology,
                               prior_half_life_h=m.prior_half_life_h, dose_mode=dose_mode,
                               calibration_sd_percent=m.calibration_sd_percent)
    extra = {"patient_id": m.patient_id, "manifest": str(m.path), "reference": m.reference,
             "timepoints": [tp.id for tp in m.timepoints], "reference_ct": str(ref.ct),
             "labels": str(m.labels) if m.labels else None, "warnings": input_warnings}
    written = write_outputs(result, affine, out, overwrite=overwrite, extra=extra, dicom_uids=study_uids(ref.ct))
    if not quiet:
        _print_summary(m, result, out, written)
    return result


def _print_summary(m: Manifest, r: TiaOutputs, out: Path, written: list[Path]) -> None:
    n = r.tia.rule.size
    counts = r.tia.rule_counts()
    share = ", ".join(f"{code} {RULE_SHORT[int(code)]} {100.0 * c / n:.1f}%" for code, c in counts.items())
    total = float(r.tia.tia_mbqh.sum(dtype=np.float64))
    print(f"patient {m.patient_id}: {len(m.timepoints)} time points ({', '.join(tp.id for tp in m.timepoints)}), "
          f"grid {r.tia.rule.shape}, total TIA {total:.4g} MBq*h "
          f"({total / m.injected_activity_mbq:.3g} h x injected)")
    print(f"eq.-6 rules (code, share of voxels): {share}")
    if r.multimodel is not None:
        mm = ", ".join(f"{k}: {v}" for k, v in r.multimodel.model_counts().items())
        print(f"multi-model selection (voxels): {mm}")
    if r.dose is not None:
        body = r.dose.body
        print(f"dose (LED): max {float(r.dose.dose_gy.max()):.3g} Gy, body mean "
              f"{float(r.dose.dose_gy[body].mean()) if body.any() else 0.0:.3g} Gy")
    for row in r.voi_rows or []:
        dose = f", mean dose {row['mean_dose_gy']:.3g} Gy" if "mean_dose_gy" in row else ""
        print(f"  {row['voi']:<16} VOI {row['tia_voi_mbqh']:.4g} MBq*h, voxel sum {row['tia_voxel_sum_mbqh']:.4g} "
              f"({row['percent_difference']:+.1f} %){dose}")
    timing = ", ".join(f"{k} {v:.2f} s" for k, v in r.timings_s.items())
    print(f"wrote {len(written)} files to {out} ({timing})")

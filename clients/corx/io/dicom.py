"""DICOM in: a CT series folder (one file per slice) or an NM (SPECT) multi-frame file -> array + RAS affine.

Geometry (DICOM patient coordinates are LPS mm; corx works in RAS mm, so the affine is ``diag(-1, -1, 1) @ LPS``):

- Array axes are (column, row, slice): ``data[i, j, k]`` is pixel column i, row j of slice k.
- ImageOrientationPatient gives the row direction X (along increasing column index) and the column direction
  Y; PixelSpacing is (row spacing, column spacing), so voxel (i, j, k) lies at
  ``P0 + i * dc * X + j * dr * Y + k * ds * N``.
- CT: the slices are sorted along N = X x Y by the projection of ImagePositionPatient; ds is their (uniform)
  distance; P0 is the first slice's position. Values: HU = stored * RescaleSlope + RescaleIntercept.
- NM (reconstructed tomography, one multi-frame file): orientation and position of the first frame from the
  Detector Information Sequence (else the top-level attributes); frame k lies at ``P0 + k * ds * N`` with
  N = X x Y and ds = SpacingBetweenSlices (else SliceThickness).

SPECT values (activity concentration in Bq/mL), first rule that applies:

1. a Real World Value Mapping item whose Measurement Units Code is Bq/mL (or kBq/mL, MBq/mL):
   stored * RealWorldValueSlope + RealWorldValueIntercept (scaled to Bq/mL);
2. Units (0054,1001) = BQML: stored * RescaleSlope + RescaleIntercept;
3. otherwise the values are counts: the manifest time point must give ``calibration_bq_per_count``, the
   activity (Bq) that one count of a voxel represents; Bq/mL = counts * calibration_bq_per_count /
   voxel volume (mL), counts = stored * RescaleSlope + RescaleIntercept.
A calibration factor given for an image that is already in Bq/mL is refused (no double calibration).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorxError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
BQML_UNITS = {"bq/ml": 1.0, "kbq/ml": 1e3, "mbq/ml": 1e6, "bqml": 1.0}
PROJECTION_TYPES = {"STATIC", "WHOLE BODY", "DYNAMIC", "GATED", "TOMO", "GATED TOMO"}
SPACING_TOLERANCE_MM = 0.01


@dataclass
class DicomVolume:
    """A DICOM image as (column, row, slice) float32 array with its RAS affine."""

    data: np.ndarray
    affine: np.ndarray
    units: str
    info: dict[str, Any] = field(default_factory=dict)


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise CorxError("reading DICOM needs pydicom: pip install -e '.[dicom]'") from exc
    return pydicom


def is_dicom_path(path: str | os.PathLike) -> bool:
    """A folder (a DICOM series), a .dcm/.dicom/.ima file, or a file with the DICM preamble."""
    p = Path(path)
    if p.is_dir():
        return True
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    if p.is_file() and not p.name.endswith((".nii", ".nii.gz")):
        try:
            with open(p, "rb") as fh:
                head = fh.read(132)
            return len(head) == 132 and head[128:] == b"DICM"
        except OSError:
            return False
    return False


def _floats(value: Any, n: int, what: str, where: Path) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CorxError(f"{where}: {what} is not a list of numbers ({value!r})") from exc
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise CorxError(f"{where}: {what} must have {n} finite values, got {value!r}")
    return arr


def _orientation(iop: Any, where: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = _floats(iop, 6, "ImageOrientationPatient", where)
    x, y = v[:3], v[3:]
    if abs(np.linalg.norm(x) - 1) > 1e-3 or abs(np.linalg.norm(y) - 1) > 1e-3 or abs(x @ y) > 1e-3:
        raise CorxError(f"{where}: ImageOrientationPatient is not two orthonormal directions ({iop!r})")
    return x, y, np.cross(x, y)


def _affine(x: np.ndarray, y: np.ndarray, n: np.ndarray, spacing: tuple[float, float, float],
            origin: np.ndarray) -> np.ndarray:
    dc, dr, ds = spacing
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = x * dc, y * dr, n * ds, origin
    return LPS_TO_RAS @ lps


def _attr(ds: Any, name: str, where: Path) -> Any:
    value = getattr(ds, name, None)
    if value is None or value == "":
        raise CorxError(f"{where}: missing DICOM attribute {name}")
    return value


def _rescale(ds: Any) -> tuple[float, float]:
    return float(getattr(ds, "RescaleSlope", 1.0) or 1.0), float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)


# ------------------------------------------------------------------------------------------------------ CT
def _read_series(folder: Path, pixels: bool) -> list[tuple[Path, Any]]:
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    if not folder.is_dir():
        raise CorxError(f"{folder}: DICOM series folder not found")
    found = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=not pixels)
        except InvalidDicomError:
            continue  # not a DICOM file (e.g. a README)
        except Exception as exc:
            raise CorxError(f"{p}: unreadable DICOM file ({exc})") from exc
        if "ImagePositionPatient" in ds:
            found.append((p, ds))
    if not found:
        raise CorxError(f"{folder}: no DICOM image slices found")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in found}
    if len(series) > 1:
        raise CorxError(f"{folder}: holds {len(series)} DICOM series; put one CT series per folder")
    return found


def _ct_geometry(folder: Path, slices: list[tuple[Path, Any]]) -> tuple[list[tuple[Path, Any]], np.ndarray,
                                                                         tuple[int, int, int]]:
    first = slices[0][1]
    modality = str(getattr(first, "Modality", "CT"))
    if modality != "CT":
        raise CorxError(f"{folder}: expected a CT series, got Modality '{modality}'")
    x, y, n = _orientation(_attr(first, "ImageOrientationPatient", slices[0][0]), slices[0][0])
    for p, ds in slices[1:]:
        xi, yi, _ = _orientation(_attr(ds, "ImageOrientationPatient", p), p)
        if not (np.allclose(xi, x, atol=1e-4) and np.allclose(yi, y, atol=1e-4)):
            raise CorxError(f"{p}: ImageOrientationPatient differs from the rest of the series")
    positions = {p: _floats(_attr(ds, "ImagePositionPatient", p), 3, "ImagePositionPatient", p)
                 for p, ds in slices}
    ordered = sorted(slices, key=lambda item: float(positions[item[0]] @ n))
    dist = np.array([float(positions[p] @ n) for p, _ in ordered])
    rows, cols = int(_attr(first, "Rows", slices[0][0])), int(_attr(first, "Columns", slices[0][0]))
    for p, ds in ordered:
        if int(ds.Rows) != rows or int(ds.Columns) != cols:
            raise CorxError(f"{p}: slice size {ds.Rows}x{ds.Columns} differs from {rows}x{cols}")
    if len(ordered) > 1:
        steps = np.diff(dist)
        if np.any(steps < SPACING_TOLERANCE_MM):
            raise CorxError(f"{folder}: two slices at the same position ({len(ordered)} slices)")
        if np.ptp(steps) > max(SPACING_TOLERANCE_MM, 1e-3 * float(np.median(steps))):
            raise CorxError(f"{folder}: slice spacing is not uniform ({steps.min():.3f} to {steps.max():.3f} mm; "
                            f"missing slices?)")
        ds_mm = float(np.mean(steps))
    else:
        ds_mm = float(getattr(first, "SpacingBetweenSlices", None) or _attr(first, "SliceThickness", folder))
    dr, dc = _floats(_attr(first, "PixelSpacing", slices[0][0]), 2, "PixelSpacing", slices[0][0])
    affine = _affine(x, y, n, (dc, dr, ds_mm), positions[ordered[0][0]])
    return ordered, affine, (cols, rows, len(ordered))


def ct_series_geometry(folder: str | os.PathLike) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, RAS affine) of a CT series from the headers only."""
    folder = Path(folder)
    _, affine, shape = _ct_geometry(folder, _read_series(folder, pixels=False))
    return shape, affine


def study_uids(path: str | os.PathLike) -> dict[str, str]:
    """FrameOfReferenceUID, StudyInstanceUID and PatientID of a DICOM CT series folder or NM file (headers
    only; keys with no value are left out); {} for a NIfTI path."""
    path = Path(path)
    if not is_dicom_path(path):
        return {}
    ds = _read_series(path, pixels=False)[0][1] if path.is_dir() else _read_nm(path, pixels=False)
    keys = ("FrameOfReferenceUID", "StudyInstanceUID", "PatientID")
    return {k: str(getattr(ds, k)) for k in keys if str(getattr(ds, k, "") or "")}


def read_ct_series(folder: str | os.PathLike) -> DicomVolume:
    """A CT series folder as HU (float32, (column, row, slice)) with its RAS affine."""
    folder = Path(folder)
    ordered, affine, shape = _ct_geometry(folder, _read_series(folder, pixels=True))
    data = np.empty(shape, dtype=np.float32)
    for k, (p, ds) in enumerate(ordered):
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            raise CorxError(f"{p}: pixel data could not be decoded ({exc})") from exc
        slope, intercept = _rescale(ds)
        data[:, :, k] = (pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)).T
    return DicomVolume(data, affine, "HU", {"slices": len(ordered), "series": str(folder)})


# ------------------------------------------------------------------------------------------------------ NM
def _read_nm(path: Path, pixels: bool) -> Any:
    pydicom = _pydicom()
    if not path.is_file():
        raise CorxError(f"{path}: file not found")
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=not pixels)
    except Exception as exc:
        raise CorxError(f"{path}: not a readable DICOM file ({exc})") from exc
    modality = str(getattr(ds, "Modality", ""))
    if modality not in ("NM", "PT"):
        raise CorxError(f"{path}: expected an NM (SPECT) image, got Modality '{modality}'")
    kind = [str(v).upper() for v in getattr(ds, "ImageType", [])]
    if len(kind) > 2 and kind[2] in PROJECTION_TYPES:
        raise CorxError(f"{path}: ImageType {'/'.join(kind)} is projection data, not a reconstructed SPECT "
                        f"(expected RECON TOMO)")
    return ds


def _nm_geometry(path: Path, ds: Any) -> tuple[np.ndarray, tuple[int, int, int]]:
    source = ds
    detector = getattr(ds, "DetectorInformationSequence", None)
    if detector and "ImageOrientationPatient" in detector[0]:
        source = detector[0]
    x, y, n = _orientation(_attr(source, "ImageOrientationPatient", path), path)
    origin = _floats(_attr(source, "ImagePositionPatient", path), 3, "ImagePositionPatient", path)
    dr, dc = _floats(_attr(ds, "PixelSpacing", path), 2, "PixelSpacing", path)
    ds_mm = getattr(ds, "SpacingBetweenSlices", None) or getattr(ds, "SliceThickness", None)
    if ds_mm is None or float(ds_mm) == 0:
        raise CorxError(f"{path}: missing DICOM attribute SpacingBetweenSlices (or SliceThickness)")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    shape = (int(_attr(ds, "Columns", path)), int(_attr(ds, "Rows", path)), frames)
    return _affine(x, y, n, (dc, dr, float(ds_mm)), origin), shape


def _bqml_mapping(ds: Any) -> tuple[float, float, str] | None:
    """(slope, intercept, unit) of a Real World Value Mapping to an activity concentration, if any."""
    items = list(getattr(ds, "RealWorldValueMappingSequence", []) or [])
    shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
    if shared:
        items += list(getattr(shared[0], "RealWorldValueMappingSequence", []) or [])
    for item in items:
        units = getattr(item, "MeasurementUnitsCodeSequence", None)
        code = str(units[0].CodeValue).strip().lower() if units else ""
        if code in BQML_UNITS and "RealWorldValueSlope" in item:
            scale = BQML_UNITS[code]
            return (float(item.RealWorldValueSlope) * scale,
                    float(getattr(item, "RealWorldValueIntercept", 0.0) or 0.0) * scale, str(units[0].CodeValue))
    return None


def _nm_units(path: Path, ds: Any, calibration: float | None) -> str:
    mapped = _bqml_mapping(ds)
    units = str(getattr(ds, "Units", "") or "").upper()
    already = "Real World Value Mapping" if mapped else ("Units BQML" if units == "BQML" else None)
    if already and calibration is not None:
        raise CorxError(f"{path}: the image is already in Bq/mL ({already}); remove 'calibration_bq_per_count' "
                        f"from its manifest time point")
    if already:
        return already
    if calibration is None:
        raise CorxError(f"{path}: SPECT values are not in Bq/mL (Units '{units or 'none'}', no Real World Value "
                        f"Mapping in Bq/mL): give 'calibration_bq_per_count' (Bq per count) in the manifest "
                        f"time point")
    return "counts"


def nm_geometry(path: str | os.PathLike, calibration: float | None = None) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, RAS affine) of an NM file from its header; also checks that its units can be resolved."""
    path = Path(path)
    ds = _read_nm(path, pixels=False)
    _nm_units(path, ds, calibration)
    affine, shape = _nm_geometry(path, ds)
    return shape, affine


def read_nm(path: str | os.PathLike, calibration: float | None = None) -> DicomVolume:
    """An NM (SPECT) multi-frame file as Bq/mL (float32, (column, row, frame)) with its RAS affine."""
    path = Path(path)
    ds = _read_nm(path, pixels=True)
    units = _nm_units(path, ds, calibration)
    affine, shape = _nm_geometry(path, ds)
    try:
        stored = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as exc:
        raise CorxError(f"{path}: pixel data could not be decoded ({exc})") from exc
    if stored.ndim == 2:
        stored = stored[None]
    if stored.shape != (shape[2], shape[1], shape[0]):
        raise CorxError(f"{path}: pixel data shape {stored.shape} does not match NumberOfFrames/Rows/Columns "
                        f"{(shape[2], shape[1], shape[0])}")
    if units == "Real World Value Mapping":
        slope, intercept, _ = _bqml_mapping(ds)  # type: ignore[misc]
        values = stored * slope + intercept
    else:
        slope, intercept = _rescale(ds)
        values = stored * slope + intercept
        if units == "counts":
            voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
            values = values * (float(calibration) / voxel_ml)  # type: ignore[arg-type]
    data = np.ascontiguousarray(values.transpose(2, 1, 0), dtype=np.float32)
    return DicomVolume(data, affine, "Bq/mL", {"source_units": units, "frames": shape[2]})

"""DICOM out: the absorbed-dose map as an RT Dose, the VOIs as a binary DICOM Segmentation, and readers for both.

Geometry (corx affines map voxel indices to RAS mm; DICOM patient coordinates are LPS mm, ``LPS = diag(-1, -1, 1)
@ RAS``). DICOM needs a right-handed frame stack (Grid Frame Offset Vector values grow along the normal
``row direction x column direction``), so the array is first brought, by an exact axis permutation/flip (no
resampling), to the orientation closest to L-P-S: array axis 0 (closest to L) -> columns, axis 1 (closest to P)
-> rows, axis 2 (closest to S) -> frames. Then, with ``u0, u1, u2`` the LPS columns of the reoriented affine:

- ImageOrientationPatient = (u0 / |u0|, u1 / |u1|), PixelSpacing = (|u1|, |u0|) (row spacing, column spacing);
- ImagePositionPatient = the centre of voxel (0, 0, 0); frame k lies at IPP + k |u2| n, n = cross product of the
  two direction cosines; GridFrameOffsetVector = (0, |u2|, 2 |u2|, ...), SliceThickness = |u2|;
- pixel data = array.transpose(2, 1, 0) (frames, rows, columns).

An axis-aligned RAS, LAS or LPS grid becomes the usual axial stack (IOP 1\\0\\0\\0\\1\\0, increasing offsets); an
oblique grid keeps its exact directions. The readers return the DICOM order (column, row, frame), as
``corx.io.dicom`` does; ``like_affine`` brings the result back onto the grid it was written from (same
voxels in another axis order). Sheared grids (non-orthogonal affine columns) cannot be written.

pydicom (RT Dose) and highdicom (Segmentation) are imported only inside the functions: the 'dicom' extra.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from .. import __version__
from ..errors import CorxError
from .imageio import atomic_path
from .labels import label_mask

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS_ORNT = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)  # array axes along +x (L), +y (P), +z (S) of LPS
UINT32_MAX = 2**32 - 1
ORTHOGONALITY_TOL = 1e-4  # |cos| between affine columns
NEGATIVE_DOSE_TOL = 1e-6  # negative round-off allowed, relative to the maximum dose
GEOMETRY_TOL_MM = 1e-3
EXTRA_HINT = "pip install -e '.[dicom]' (the 'dicom' extra)"

#: Segment name (lower case) -> pydicom ``codes.SCT`` keyword of its Segmented Property Type.
ORGAN_CODES: dict[str, str] = {
    "body": "EntireBody", "muscle": "SkeletalMuscle", "lung": "Lung", "lungs": "Lung", "liver": "Liver",
    "spleen": "Spleen", "kidney": "Kidney", "kidneys": "Kidney", "kidney_cortex": "Kidney",
    "kidney_medulla": "Kidney", "bladder": "Bladder", "bone": "Bone", "heart": "Heart", "pancreas": "Pancreas",
    "parotid": "ParotidGland", "parotid_glands": "ParotidGland", "salivary_glands": "SalivaryGland",
}
TUMOUR_PREFIXES = ("tumour", "tumor", "lesion")


# --------------------------------------------------------------------------------------------- libraries
def _pydicom() -> Any:
    """pydicom, or a CorxError naming the extra."""
    try:
        import pydicom
    except ImportError as exc:
        raise CorxError(f"DICOM export needs pydicom: {EXTRA_HINT}") from exc
    return pydicom


def _highdicom() -> Any:
    """highdicom, or a CorxError naming the extra."""
    try:
        import highdicom
    except ImportError as exc:
        raise CorxError(f"DICOM Segmentation export needs highdicom: {EXTRA_HINT}") from exc
    return highdicom


# --------------------------------------------------------------------------------------------- geometry
def _check_affine(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The affine as float64 4x4, checked: finite, non-degenerate, orthogonal columns (DICOM has no shear)."""
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise CorxError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    if len(shape) != 3 or min(shape) < 1:
        raise CorxError(f"expected a 3-D array, got shape {shape}")
    cols = aff[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    if np.any(norms <= 0):
        raise CorxError(f"affine has a zero voxel size: {norms}")
    unit = cols / norms
    cosines = np.abs(unit.T @ unit - np.eye(3))
    if cosines.max() > ORTHOGONALITY_TOL:
        raise CorxError(f"affine columns are not orthogonal (max |cos| {cosines.max():.2e}): a sheared grid "
                        f"cannot be written as DICOM")
    return aff


def _to_lps_stack(data: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``data`` reoriented (exact permutation/flip) to the right-handed axes closest to L, P, S; its LPS affine."""
    lps = LPS_FROM_RAS @ affine_ras
    transform = ornt_transform(io_orientation(lps), LPS_ORNT)
    out_lps = lps @ inv_ornt_aff(transform, data.shape[:3])
    if np.linalg.det(out_lps[:3, :3]) < 0:  # not expected (closest match); a guard
        transform[transform[:, 0] == 2, 1] *= -1
        out_lps = lps @ inv_ornt_aff(transform, data.shape[:3])
    return apply_orientation(data, transform), out_lps


def _plane_geometry(lps: np.ndarray) -> dict[str, Any]:
    """IOP, IPP, PixelSpacing and the frame spacing of a right-handed LPS affine (columns, rows, frames)."""
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    x, y = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    return {"iop": [*x, *y], "ipp": list(lps[:3, 3]), "pixel_spacing": [spacing[1], spacing[0]],
            "frame_spacing": float(spacing[2])}


def _affine_from_plane(iop: Sequence[float], ipp: Sequence[float], pixel_spacing: Sequence[float],
                       frame_spacing: float) -> np.ndarray:
    """RAS affine of (column, row, frame) indices from the DICOM plane attributes (signed frame spacing)."""
    v = np.array([float(t) for t in iop], dtype=np.float64)
    x, y = v[:3] / np.linalg.norm(v[:3]), v[3:] / np.linalg.norm(v[3:])
    lps = np.eye(4)
    dr, dc = (float(t) for t in pixel_spacing)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = x * dc, y * dr, np.cross(x, y) * frame_spacing
    lps[:3, 3] = [float(t) for t in ipp]
    return LPS_FROM_RAS @ lps  # diag(-1, -1, 1, 1) is its own inverse


def reorient_like(data: np.ndarray, affine: np.ndarray, like_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (3-D, or 4-D with trailing channels) moved by axis permutation/flip onto the grid of
    ``like_affine``; CorxError when the two grids are not the same voxels (within 1e-3 mm)."""
    like = np.asarray(like_affine, dtype=np.float64)
    transform = ornt_transform(io_orientation(affine), io_orientation(like))
    out_affine = affine @ inv_ornt_aff(transform, data.shape[:3])
    if not np.allclose(out_affine, like, atol=GEOMETRY_TOL_MM, rtol=0):
        raise CorxError("the DICOM grid is not the grid of like_affine (up to axis order): "
                        f"{np.round(out_affine, 4).tolist()} vs {np.round(like, 4).tolist()}")
    return apply_orientation(data, transform), like.copy()


# --------------------------------------------------------------------------------------------- common tags
def _ds(value: float) -> str:
    """A float as a DICOM decimal string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value) + 0.0)  # + 0.0 turns -0.0 into 0.0


def _now() -> tuple[str, str]:
    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _file_dataset(sop_class: str) -> Any:
    """An empty DICOM file dataset (Explicit VR Little Endian) of ``sop_class`` with a fresh SOP Instance UID."""
    pydicom = _pydicom()
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", pydicom.Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    return ds


def _patient_study(ds: Any, patient_id: str, study_instance_uid: str | None, frame_of_reference_uid: str | None
                   ) -> None:
    """Patient, study, frame of reference and equipment attributes (type 2 ones empty)."""
    from pydicom.uid import generate_uid

    if not patient_id or not str(patient_id).strip():
        raise CorxError("patient_id must not be empty")
    day, time = _now()
    ds.PatientID, ds.PatientName = str(patient_id), f"{patient_id}^"  # family name = the ID
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID = day, time, ""
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer, ds.SoftwareVersions = "corx", __version__
    ds.ContentDate, ds.ContentTime = day, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = day, time


# --------------------------------------------------------------------------------------------- RT Dose
def _dose_pixels(dose: np.ndarray) -> tuple[np.ndarray, float]:
    """(uint32 stored values, DoseGridScaling) with stored * scaling = dose within scaling / 2."""
    if not np.all(np.isfinite(dose)):
        raise CorxError("dose map has NaN or infinite values")
    top = float(dose.max())
    if float(dose.min()) < -NEGATIVE_DOSE_TOL * max(top, 0.0):
        raise CorxError(f"dose map has negative values (min {float(dose.min()):.3g} Gy)")
    scaling = float(_ds(top / UINT32_MAX)) if top > 0 else 1.0
    stored = np.clip(np.rint(dose / scaling), 0, UINT32_MAX).astype(np.uint32)
    return stored, scaling


def _rtdose_dataset(dose: np.ndarray, lps: np.ndarray, dose_type: str, comment: str) -> Any:
    """The RT Dose dataset (image, multi-frame and RT Dose modules) of a (column, row, frame) dose array."""
    from pydicom.tag import Tag
    from pydicom.uid import generate_uid

    geo = _plane_geometry(lps)
    stored, scaling = _dose_pixels(dose)
    ds = _file_dataset(RT_DOSE_STORAGE)
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "RTDOSE", generate_uid(), 1, 1
    ds.SeriesDescription = "corx absorbed dose"
    ds.ImageOrientationPatient = [_ds(v) for v in geo["iop"]]
    ds.ImagePositionPatient = [_ds(v) for v in geo["ipp"]]
    ds.PixelSpacing = [_ds(v) for v in geo["pixel_spacing"]]
    ds.SliceThickness = _ds(geo["frame_spacing"])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Columns, ds.Rows, ds.NumberOfFrames = dose.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.FrameIncrementPointer = Tag("GridFrameOffsetVector")
    ds.GridFrameOffsetVector = [_ds(k * geo["frame_spacing"]) for k in range(dose.shape[2])]
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", dose_type, "PLAN"
    ds.DoseGridScaling = _ds(scaling)
    ds.DoseComment = comment[:64]
    ds.PixelData = np.ascontiguousarray(stored.transpose(2, 1, 0)).astype("<u4").tobytes()
    return ds


def write_rtdose(dose_gy: np.ndarray, affine: np.ndarray, target: str | os.PathLike, *, patient_id: str,
                 frame_of_reference_uid: str | None = None, study_instance_uid: str | None = None,
                 overwrite: bool = False, dose_type: str = "PHYSICAL",
                 comment: str = "177Lu absorbed dose (corx)") -> Path:
    """Write a dose map (Gy, voxel -> RAS ``affine``) as a multi-frame RT Dose file, atomically.

    DoseUnits GY, DoseType PHYSICAL (or EFFECTIVE for a biologically weighted map), DoseSummationType PLAN,
    uint32 pixels x DoseGridScaling. A missing FrameOfReferenceUID / StudyInstanceUID is generated. Refuses an
    existing ``target`` unless ``overwrite``.
    """
    pydicom = _pydicom()
    if dose_type not in ("PHYSICAL", "EFFECTIVE"):
        raise CorxError(f"dose_type must be PHYSICAL or EFFECTIVE, got {dose_type!r}")
    dose = np.asarray(dose_gy, dtype=np.float64)
    aff = _check_affine(affine, dose.shape)
    target = Path(target)
    if target.exists() and not overwrite:
        raise CorxError(f"{target}: already exists (use --overwrite to replace it)")
    stack, lps = _to_lps_stack(dose, aff)
    ds = _rtdose_dataset(stack, lps, dose_type, comment)
    _patient_study(ds, patient_id, study_instance_uid, frame_of_reference_uid)
    with atomic_path(target, overwrite=overwrite) as tmp:
        pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
    return target


def _frame_spacing(ds: Any, where: Path) -> float:
    """Signed spacing of the frames along the normal, from GridFrameOffsetVector (relative or absolute form)."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames == 1:
        return float(getattr(ds, "SliceThickness", None) or 1.0)
    offsets = np.array([float(v) for v in getattr(ds, "GridFrameOffsetVector", [])], dtype=np.float64)
    if offsets.size != frames:
        raise CorxError(f"{where}: GridFrameOffsetVector has {offsets.size} values for {frames} frames")
    steps = np.diff(offsets - offsets[0])
    if np.ptp(steps) > max(1e-3, 1e-4 * abs(float(np.mean(steps)))) or np.any(steps == 0):
        raise CorxError(f"{where}: GridFrameOffsetVector is not uniformly spaced (steps {steps.min():.4g} to "
                        f"{steps.max():.4g} mm)")
    return float(np.mean(steps))


def read_dataset(path: str | os.PathLike, what: str) -> Any:
    """The DICOM dataset at ``path``; a CorxError naming the file when it is missing or not a readable ``what``."""
    pydicom = _pydicom()
    path = Path(path)
    if not path.is_file():
        raise CorxError(f"{path}: file not found")
    try:
        return pydicom.dcmread(str(path))
    except Exception as exc:
        raise CorxError(f"{path}: not a readable {what} ({exc})") from exc


def read_rtdose(path: str | os.PathLike, like_affine: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(dose in Gy as float64 (column, row, frame), RAS affine) of an RT Dose file; with ``like_affine`` the dose
    is reoriented onto that grid (see ``reorient_like``)."""
    path = Path(path)
    ds = read_dataset(path, "DICOM file")
    if str(getattr(ds, "Modality", "")) != "RTDOSE":
        raise CorxError(f"{path}: expected Modality RTDOSE, got {getattr(ds, 'Modality', None)!r}")
    if str(getattr(ds, "DoseUnits", "")).upper() != "GY":
        raise CorxError(f"{path}: DoseUnits {getattr(ds, 'DoseUnits', None)!r} is not GY")
    stored = np.asarray(ds.pixel_array, dtype=np.float64)
    if stored.ndim == 2:
        stored = stored[None]
    dose = stored.transpose(2, 1, 0) * float(getattr(ds, "DoseGridScaling", 1.0) or 1.0)
    affine = _affine_from_plane(ds.ImageOrientationPatient, ds.ImagePositionPatient, ds.PixelSpacing,
                                _frame_spacing(ds, path))
    if like_affine is not None:
        return reorient_like(dose, affine, like_affine)
    return dose, affine


# --------------------------------------------------------------------------------------------- Segmentation
def _segments(names: Mapping[int, str] | Iterable[Any]) -> list[tuple[str, tuple[int, ...]]]:
    """[(name, label values)] from {label: name}, [(name, labels)] pairs or objects with .name/.labels (Voi)."""
    if isinstance(names, Mapping):
        items = [(str(name), (int(label),)) for label, name in names.items()]
    else:
        items = []
        for entry in names:
            name, labels = (entry.name, entry.labels) if hasattr(entry, "labels") else entry
            labels = (labels,) if np.isscalar(labels) else labels
            items.append((str(name), tuple(int(v) for v in labels)))
    if not items:
        raise CorxError("no segments to write (names is empty)")
    seen = [n for n, _ in items]
    duplicates = sorted({n for n in seen if seen.count(n) > 1})
    if duplicates:
        raise CorxError(f"segment names must be unique, repeated: {duplicates}")
    if any(0 in labels or not labels for _, labels in items):
        raise CorxError("label 0 (background) cannot be a segment, and every segment needs a label value")
    return items


def _label_planes(labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str] | Iterable[Any],
                  target: str | os.PathLike, overwrite: bool
                  ) -> tuple[Path, list[tuple[str, tuple[int, ...]]], np.ndarray, np.ndarray]:
    """Checked inputs of a VOI export (SEG, RT Structure Set): the target (refused if it exists, unless
    ``overwrite``), the segments, and the label map as an LPS plane stack with its LPS affine."""
    lab = np.asarray(labels)
    aff = _check_affine(affine, lab.shape)
    if not np.issubdtype(lab.dtype, np.integer):
        raise CorxError(f"labels must be an integer array, got {lab.dtype}")
    target = Path(target)
    if target.exists() and not overwrite:
        raise CorxError(f"{target}: already exists (use --overwrite to replace it)")
    stack, lps = _to_lps_stack(lab, aff)
    return target, _segments(names), stack, lps


def segment_codes(name: str) -> tuple[Any, Any]:
    """(Segmented Property Category, Type) codes of a segment name: tumours are Morphologically Abnormal
    Structure / Neoplasm, known organs Anatomical Structure / the organ, anything else Anatomical Structure /
    Organ."""
    from pydicom.sr.codedict import codes

    key = name.strip().lower()
    if key.startswith(TUMOUR_PREFIXES):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm
    organ = ORGAN_CODES.get(key)
    return codes.SCT.AnatomicalStructure, getattr(codes.SCT, organ) if organ else codes.SCT.Organ


def _segment_descriptions(segments: list[tuple[str, tuple[int, ...]]], algorithm: str | None,
                          algorithm_family: str) -> list[Any]:
    """highdicom SegmentDescriptions: MANUAL without ``algorithm``, else AUTOMATIC with its identification."""
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    ident = None
    if algorithm:
        family = getattr(codes.cid7162, algorithm_family, None)
        if family is None:
            raise CorxError(f"unknown algorithm family {algorithm_family!r} (CID 7162: {codes.cid7162.dir()})")
        ident = hd.AlgorithmIdentificationSequence(name=algorithm, family=family, version=__version__)
    out = []
    for number, (name, labels) in enumerate(segments, start=1):
        category, kind = segment_codes(name)
        item = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type="AUTOMATIC" if ident else "MANUAL",
            algorithm_identification=ident)
        item.SegmentDescription = f"corx label(s) {'+'.join(map(str, labels))}"
        out.append(item)
    return out


def _placeholder_source(shape: tuple[int, ...], lps: np.ndarray, patient_id: str, study_instance_uid: str | None,
                        frame_of_reference_uid: str) -> Any:
    """A header-only CT slice (the first frame of the grid) standing in for the source series of a segmentation
    made on corx's own grid: it carries patient, study and frame of reference (no pixel data, never written)."""
    from pydicom.uid import generate_uid

    geo = _plane_geometry(lps)
    ds = _file_dataset("1.2.840.10008.5.1.4.1.1.2")
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "CT", generate_uid(), 1, 1
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.Columns, ds.Rows = shape[0], shape[1]
    ds.ImageOrientationPatient = [_ds(v) for v in geo["iop"]]
    ds.ImagePositionPatient = [_ds(v) for v in geo["ipp"]]
    ds.PixelSpacing = [_ds(v) for v in geo["pixel_spacing"]]
    ds.SliceThickness = _ds(geo["frame_spacing"])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    _patient_study(ds, patient_id, study_instance_uid, frame_of_reference_uid)
    return ds


def _source_frame_of_reference(source: Any, patient_id: str, frame_of_reference_uid: str | None) -> str:
    """The frame of reference of a given source image, checked against ``patient_id`` and the UID asked for."""
    uid = str(getattr(source, "FrameOfReferenceUID", "") or "")
    if not uid:
        raise CorxError("source_images[0] has no FrameOfReferenceUID")
    if frame_of_reference_uid and frame_of_reference_uid != uid:
        raise CorxError(f"frame_of_reference_uid {frame_of_reference_uid} differs from the source images' {uid}")
    if str(getattr(source, "PatientID", "")) != str(patient_id):
        raise CorxError(f"patient_id {patient_id!r} differs from the source images' "
                        f"{getattr(source, 'PatientID', None)!r}")
    return uid


def _seg_volume(hd: Any, masks: np.ndarray, lps: np.ndarray, frame_of_reference_uid: str) -> Any:
    """A highdicom Volume (frame, row, column, segment) of (column, row, frame, segment) masks."""
    affine = lps[:, [2, 1, 0, 3]]  # highdicom indexes (slice, row, column)
    array = np.ascontiguousarray(masks.transpose(2, 1, 0, 3))
    return hd.Volume(array, affine, coordinate_system="PATIENT", frame_of_reference_uid=frame_of_reference_uid,
                     channels={"SegmentNumber": list(range(1, masks.shape[3] + 1))})


def write_seg(labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str] | Iterable[Any],
              target: str | os.PathLike, *, patient_id: str, frame_of_reference_uid: str | None = None,
              study_instance_uid: str | None = None, overwrite: bool = False, algorithm: str | None = None,
              algorithm_family: str = "ArtificialIntelligence", source_images: Sequence[Any] | None = None) -> Path:
    """Write the VOIs of a label map as a binary DICOM Segmentation (one segment per VOI), atomically.

    ``names``: {label: name}, [(name, label or labels)] or corx.dosimetry.voi.Voi objects; a segment is the union of its
    labels. ``algorithm`` None: MANUAL segments; else AUTOMATIC with that algorithm name and a CID 7162 family
    (e.g. "corx phantom generator"). ``source_images``: headers of the series the labels were drawn on (same
    frame of reference); without them a header-only placeholder CT carries patient/study/frame of reference.
    """
    pydicom = _pydicom()
    hd = _highdicom()
    from pydicom.uid import generate_uid

    target, segments, stack, lps = _label_planes(labels, affine, names, target, overwrite)
    masks = np.stack([label_mask(stack, values) for _, values in segments], axis=-1).astype(np.uint8)
    if source_images:
        frame_of_reference_uid = _source_frame_of_reference(source_images[0], patient_id, frame_of_reference_uid)
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    sources = list(source_images) if source_images else [
        _placeholder_source(stack.shape, lps, patient_id, study_instance_uid, frame_of_reference_uid)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=_seg_volume(hd, masks, lps, frame_of_reference_uid),
        segmentation_type="BINARY", segment_descriptions=_segment_descriptions(segments, algorithm,
                                                                               algorithm_family),
        series_instance_uid=generate_uid(), series_number=1, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="corx", manufacturer_model_name="corx", software_versions=__version__,
        device_serial_number="0", content_description="corx VOIs", content_label="VOIS",
        omit_empty_frames=False)
    with atomic_path(target, overwrite=overwrite) as tmp:
        pydicom.dcmwrite(str(tmp), seg, enforce_file_format=True)
    return target


def read_seg(path: str | os.PathLike, like_affine: np.ndarray | None = None
             ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({segment label: bool mask (column, row, frame)}, RAS affine) of a DICOM Segmentation; with
    ``like_affine`` the masks are reoriented onto that grid (see ``reorient_like``)."""
    hd = _highdicom()
    path = Path(path)
    if not path.is_file():
        raise CorxError(f"{path}: file not found")
    try:
        seg = hd.seg.segread(str(path))
        volume = seg.get_volume(combine_segments=False)
    except Exception as exc:
        raise CorxError(f"{path}: not a readable DICOM Segmentation volume ({exc})") from exc
    numbers = [int(n) for n in volume.get_channel_values(volume.channel_descriptors[0])]  # segment numbers
    masks = volume.array.transpose(2, 1, 0, 3).astype(bool)
    affine = LPS_FROM_RAS @ volume.affine[:, [2, 1, 0, 3]]
    if like_affine is not None:
        masks, affine = reorient_like(masks, affine, like_affine)
    labels = [str(seg.get_segment_description(n).segment_label) for n in numbers]
    return {label: masks[..., i] for i, label in enumerate(labels)}, affine

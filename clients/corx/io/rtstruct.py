"""DICOM RT Structure Set out and back: the VOIs of a label map as closed planar contours.

Treatment-planning systems and DVH tools (dicompyler, MIM, Eclipse) read structures as RTSTRUCT contours rather
than as a DICOM Segmentation. Each VOI (the union of its labels) is contoured on every frame of the grid it was
drawn on, in the same right-handed L-P-S frame stack as ``dose.dcm`` (:mod:`corx.io.dicom_export`), so the
contour planes are the dose planes.

A contour is the 0.5 iso-line of the zero-padded binary mask of one frame (marching squares, contourpy). It runs
half-way between voxel centres, so a voxel centre lies inside the loops (outer boundaries and holes, combined by
exclusive or, as DICOM readers do) exactly when the voxel is in the VOI: :func:`read_rtstruct` gives the masks
back. Points on straight runs are dropped (they add nothing to the polygon).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorxError
from .dicom_export import (
    LPS_FROM_RAS,
    _check_affine,
    _file_dataset,
    _label_planes,
    _now,
    _patient_study,
    _pydicom,
    _to_lps_stack,
    read_dataset,
    reorient_like,
)
from .imageio import atomic_path
from .labels import label_mask

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: ROI display colours, cycled (tab10)
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
CONTOUR_DATA = 0x30060050
PLANE_TOL_MM = 1e-2  # contour points of one plane must agree on the plane coordinate within this


def frame_loops(mask: np.ndarray) -> list[np.ndarray]:
    """Closed loops (N, 2) in (column, row) voxel indices around the voxels of a 2-D (column, row) mask."""
    from contourpy import contour_generator

    padded = np.pad(np.asarray(mask, dtype=np.float64), 1)
    lines = contour_generator(z=padded.T).lines(0.5)  # z[row, column]: points come as (column, row)
    loops = []
    for line in lines:
        pts = np.asarray(line, dtype=np.float64)[:-1] - 1.0  # contourpy repeats the first point; undo the pad
        step_in, step_out = pts - np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0) - pts
        turn = step_in[:, 0] * step_out[:, 1] - step_in[:, 1] * step_out[:, 0]
        pts = pts[np.abs(turn) > 1e-9]
        if len(pts) >= 3:
            loops.append(pts)
    return loops


def _raw_ds(values: np.ndarray) -> Any:
    """A Contour Data element from its encoded text (pydicom would otherwise validate each of ~10^5 values)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    flat = np.asarray(values, dtype=np.float64).ravel().tolist()
    raw = ("\\".join(["%.3f"] * len(flat)) % tuple(flat)).encode("ascii")  # one C-level format: ~4x faster
    raw += b" " * (len(raw) % 2)  # even length, padded with a space
    return RawDataElement(Tag(CONTOUR_DATA), "DS", len(raw), raw, 0, False, True)


def _contour_points(contour: Any) -> np.ndarray:
    """(N, 3) LPS mm points of a contour item, parsed from the stored text when it has not been decoded yet."""
    element = contour.get_item(CONTOUR_DATA)
    if element is None:
        raise CorxError("a contour has no Contour Data")
    value = element.value
    if isinstance(value, bytes):
        numbers = np.array(value.replace(b" ", b"").split(b"\\"), dtype=np.float64)
    else:
        numbers = np.asarray(value if isinstance(value, Sequence) else [value], dtype=np.float64)
    if numbers.size % 3:
        raise CorxError(f"a contour has {numbers.size} Contour Data values, not a multiple of 3")
    return numbers.reshape(-1, 3)


def _interpreted_type(name: str) -> str:
    key = name.strip().lower()
    if key in ("body", "external"):
        return "EXTERNAL"
    return "GTV" if key.startswith(("tumour", "tumor", "lesion")) else "ORGAN"


def _roi_contours(mask: np.ndarray, lps: np.ndarray) -> list[Any]:
    """Contour items (CLOSED_PLANAR, LPS mm) of a (column, row, frame) mask, frame by frame."""
    from pydicom.charset import default_encoding
    from pydicom.dataset import Dataset

    items = []
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        for loop in frame_loops(mask[:, :, k]):
            idx = np.column_stack([loop, np.full(len(loop), float(k)), np.ones(len(loop))])
            xyz = (lps @ idx.T)[:3].T
            c = Dataset()
            c.set_original_encoding(False, True, default_encoding)  # as the file: its raw points are written as is
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(xyz)
            c.ContourNumber = len(items) + 1
            c[CONTOUR_DATA] = _raw_ds(xyz.ravel())
            items.append(c)
    return items


def write_rtstruct(labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str] | Iterable[Any],
                   target: str | os.PathLike, *, patient_id: str, frame_of_reference_uid: str | None = None,
                   study_instance_uid: str | None = None, overwrite: bool = False) -> Path:
    """Write the VOIs of a label map as an RT Structure Set of closed planar contours, atomically.

    ``names`` as for :func:`corx.io.dicom_export.write_seg` ({label: name}, [(name, labels)] or Voi objects).
    An empty VOI is listed with no contours. Refuses an existing ``target`` unless ``overwrite``.
    """
    pydicom = _pydicom()
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    target, segments, stack, lps = _label_planes(labels, affine, names, target, overwrite)
    ds = _file_dataset(RT_STRUCTURE_SET_STORAGE)
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "RTSTRUCT", generate_uid(), 1, 1
    ds.SeriesDescription = "corx VOIs"
    _patient_study(ds, patient_id, study_instance_uid, frame_of_reference_uid)
    frame = ds.FrameOfReferenceUID
    del ds.FrameOfReferenceUID, ds.PositionReferenceIndicator  # an RT Structure Set names it per ROI instead
    day, time = _now()
    ds.StructureSetLabel, ds.StructureSetName = "corx VOIs", "corx VOIs"
    ds.StructureSetDate, ds.StructureSetTime = day, time
    ref = Dataset()
    ref.FrameOfReferenceUID = frame
    ds.ReferencedFrameOfReferenceSequence = [ref]
    rois, contours, observations = [], [], []
    for number, (name, values) in enumerate(segments, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, frame, name[:64]
        roi.ROIGenerationAlgorithm = "MANUAL"
        roi.ROIGenerationDescription = f"contours of corx label(s) {'+'.join(map(str, values))}"[:64]
        rois.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = list(COLOURS[(number - 1) % len(COLOURS)])
        item.ContourSequence = _roi_contours(label_mask(stack, values), lps)
        contours.append(item)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType, obs.ROIInterpreter = _interpreted_type(name), ""
        observations.append(obs)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    ds.ApprovalStatus = "UNAPPROVED"
    with atomic_path(target, overwrite=overwrite) as tmp:
        pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
    return target


def read_rtstruct(path: str | os.PathLike, shape: tuple[int, ...], affine: np.ndarray
                  ) -> dict[str, np.ndarray]:
    """{ROI name: bool mask on the grid (``shape``, RAS ``affine``)}: the voxels whose centres lie inside the
    ROI's contours (the loops of one plane combined by exclusive or). Every contour must lie on a frame of that
    grid's L-P-S stack (the planes :func:`write_rtstruct` and ``dose.dcm`` use)."""
    from matplotlib.path import Path as Polygon

    path = Path(path)
    ds = read_dataset(path, "RT Structure Set")
    try:
        names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
        roi_contours = list(ds.ROIContourSequence)
    except Exception as exc:
        raise CorxError(f"{path}: not a readable RT Structure Set ({exc})") from exc
    aff = _check_affine(affine, tuple(shape))
    stack, lps = _to_lps_stack(np.zeros(tuple(shape), np.uint8), aff)
    to_index = np.linalg.inv(lps)  # LPS mm -> (column, row, frame)
    frame_mm = float(np.linalg.norm(lps[:3, 2]))
    out: dict[str, np.ndarray] = {}
    for item in roi_contours:
        name = names.get(int(item.ReferencedROINumber), str(item.ReferencedROINumber))
        mask = np.zeros(stack.shape, dtype=bool)
        for c in getattr(item, "ContourSequence", []):
            xyz = _contour_points(c)
            ijk = (to_index @ np.column_stack([xyz, np.ones(len(xyz))]).T)[:3].T
            k = int(np.rint(ijk[:, 2].mean()))
            if np.abs(ijk[:, 2] - k).max() * frame_mm > PLANE_TOL_MM or not 0 <= k < stack.shape[2]:
                raise CorxError(f"{path}: a contour of ROI {name!r} does not lie on a frame of the given grid")
            lo = np.clip(np.ceil(ijk[:, :2].min(axis=0)), 0, None).astype(int)  # centres in the loop's box only
            hi = np.minimum(np.floor(ijk[:, :2].max(axis=0)).astype(int) + 1, stack.shape[:2])
            if np.any(hi <= lo):
                continue
            box = np.indices(tuple(hi - lo)).reshape(2, -1).T + lo
            inside = Polygon(ijk[:, :2]).contains_points(box).reshape(tuple(hi - lo))
            mask[lo[0]:hi[0], lo[1]:hi[1], k] ^= inside
        out[name] = reorient_like(mask, LPS_FROM_RAS @ lps, aff)[0]
    return out

"""Reading a time point's CT or SPECT, NIfTI or DICOM, as a :class:`corx.io.volume.Volume` (RAS mm affine).

NIfTI: CT in HU, SPECT in Bq/mL (the manifest contract). DICOM: a CT series folder or an NM multi-frame file,
see :mod:`corx.io.dicom` for geometry and units.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import CorxError
from . import dicom
from .activity import clip_small_negatives
from .imageio import load_image
from .volume import Volume, load_volume


def _check_role(role: str) -> None:
    if role not in ("ct", "spect"):
        raise CorxError(f"unknown image role {role!r} (expected 'ct' or 'spect')")


def _check_calibration(path: Path, role: str, calibration: float | None) -> None:
    if calibration is not None and (role != "spect" or not dicom.is_dicom_path(path)):
        raise CorxError(f"{path}: 'calibration_bq_per_count' applies only to a DICOM SPECT in counts "
                        f"(NIfTI SPECT must already be in Bq/mL)")


def _checked_path(path: str | os.PathLike, role: str, calibration: float | None) -> Path:
    """Validate role and calibration; a DICOM CT must be a series folder."""
    _check_role(role)
    path = Path(path)
    _check_calibration(path, role, calibration)
    if role == "ct" and dicom.is_dicom_path(path) and not path.is_dir():
        raise CorxError(f"{path}: a DICOM CT must be a series folder (one file per slice)")
    return path


def image_geometry(path: str | os.PathLike, role: str, calibration: float | None = None
                   ) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, RAS affine) of a time point image, from the header where possible (for validation)."""
    path = _checked_path(path, role, calibration)
    if dicom.is_dicom_path(path):
        return dicom.ct_series_geometry(path) if role == "ct" else dicom.nm_geometry(path, calibration)
    img = load_image(path)
    return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)


def read_volume(path: str | os.PathLike, role: str, calibration: float | None = None,
                warn: Callable[[str], None] | None = None) -> Volume:
    """A time point's CT (HU) or SPECT (Bq/mL) as a float32 Volume; NIfTI or DICOM by the path.

    A SPECT's small negative voxels are set to 0 and reported through ``warn`` (default: ``warnings.warn``);
    large ones are refused (:func:`corx.io.activity.clip_small_negatives`).
    """
    path = _checked_path(path, role, calibration)
    if dicom.is_dicom_path(path):
        vol = dicom.read_ct_series(path) if role == "ct" else dicom.read_nm(path, calibration)
        vol = Volume(vol.data, vol.affine)
    else:
        vol = load_volume(path)
    if role == "spect":
        data, message = clip_small_negatives(vol.data, path)
        if message is not None:
            (warn or (lambda text: warnings.warn(text, stacklevel=3)))(message)
            vol = Volume(data, vol.affine)
    return vol


def array_on_grid(path: str | os.PathLike, shape: tuple[int, ...], affine: np.ndarray, what: str = "image",
                  tolerance_mm: float = 1e-3) -> np.ndarray:
    """A 3-D NIfTI's data on the grid (shape, affine): the same grid, or exactly a flip/permutation of it.

    A map written for the NIfTI version of an image whose DICOM version orders the axes differently (labels,
    a phantom's truth) is reoriented without interpolation; any other grid is refused.
    """
    import nibabel as nib

    path = Path(path)
    img = load_image(path)
    data = np.asarray(img.dataobj)
    if data.ndim != 3:
        raise CorxError(f"{path}: expected a 3-D {what}, got shape {data.shape}")
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                                nib.orientations.io_orientation(affine))
    moved = nib.orientations.apply_orientation(data, transform)
    moved_affine = img.affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    if moved.shape != tuple(shape[:3]) or not np.allclose(moved_affine, affine, rtol=0, atol=tolerance_mm):
        raise CorxError(f"{path}: {what} grid (shape {data.shape}) is not the reference SPECT grid "
                        f"(shape {tuple(shape[:3])}) in shape or affine")
    return np.ascontiguousarray(moved)


def labels_on_grid(path: str | os.PathLike, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """An integer label map on the reference grid (see :func:`array_on_grid`), with at least one label."""
    data = array_on_grid(path, shape, affine, "label map")
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(np.asarray(data, dtype=np.float64))
    data = data.astype(np.int32)
    if not np.any(data > 0):
        raise CorxError(f"{path}: label map contains no labelled voxel (all 0)")
    return data

"""The DICOM files of a TIA result (RT Dose, SEG, RT Structure Set), written from plain data.

Light on purpose: the pipeline's side process imports this module, its two writers, pydicom and highdicom as it
starts, and none of the dosimetry (nor scipy.fft, scipy.ndimage, scipy.special behind it), so that it is ready
sooner and takes less CPU from the pipeline.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: the modules that write the DICOM files (what the side process imports as it starts, beside pydicom, highdicom)
DICOM_WRITER_MODULES = ("corx.io.dicom_outputs", "corx.io.dicom_export", "corx.io.rtstruct")


@dataclass
class DicomContent:
    """What the DICOM outputs hold: the dose map (Gy) and its mode, the label map and its VOIs as (name, label
    values) pairs. A few arrays of a TIA result, so that handing them to another process pickles MBs."""

    dose_gy: np.ndarray | None = None
    dose_mode: str = ""
    labels: np.ndarray | None = None
    vois: list[tuple[str, tuple[int, ...]]] | None = None


def write_dicom_outputs(content: DicomContent, affine: np.ndarray, out: Path, patient_id: str,
                        uids: dict[str, str] | None = None, overwrite: bool = False) -> tuple[list[Path], str | None]:
    """``dose.dcm`` (RT Dose, Gy), ``voi_seg.dcm`` (DICOM SEG of the VOIs) and ``voi_rtstruct.dcm`` (RT Structure
    Set: the VOIs as contours on the dose planes) on the TIA grid, in the study and
    frame of reference of ``uids`` (the reference CT's, when it is DICOM; new UIDs otherwise). Returns (files,
    None), or ([], the reason) when the `dicom` extra (pydicom, highdicom) is not installed."""
    if content.dose_gy is None and content.labels is None:
        return [], None
    if importlib.util.find_spec("pydicom") is None or importlib.util.find_spec("highdicom") is None:
        return [], ("DICOM outputs (dose.dcm, voi_seg.dcm, voi_rtstruct.dcm) not written: install the extra, "
                    "pip install 'corx[dicom]'")
    from pydicom.uid import generate_uid

    from .dicom_export import write_rtdose, write_seg
    from .rtstruct import write_rtstruct

    uids = uids or {}
    study = uids.get("StudyInstanceUID") or generate_uid()
    frame = uids.get("FrameOfReferenceUID") or generate_uid()
    pid = uids.get("PatientID") or patient_id
    written = []
    if content.dose_gy is not None:
        written.append(write_rtdose(content.dose_gy, affine, out / "dose.dcm", patient_id=pid,
                                    frame_of_reference_uid=frame, study_instance_uid=study, overwrite=overwrite,
                                    comment=f"177Lu absorbed dose ({content.dose_mode.upper()}, corx)"))
    if content.labels is not None and content.vois:
        written.append(write_seg(content.labels, affine, content.vois, out / "voi_seg.dcm", patient_id=pid,
                                 frame_of_reference_uid=frame, study_instance_uid=study, overwrite=overwrite))
        written.append(write_rtstruct(content.labels, affine, content.vois, out / "voi_rtstruct.dcm", patient_id=pid,
                                      frame_of_reference_uid=frame, study_instance_uid=study, overwrite=overwrite))
    return written, None

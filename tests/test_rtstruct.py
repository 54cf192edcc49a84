"""RT Structure Set out: the VOI contours give the label masks back on any grid, lie on the RT Dose planes, and
dicompyler-core (an independent DVH program) computes the same DVH from dose.dcm + voi_rtstruct.dcm as corx."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from corx.dosimetry.dose import dvh_metrics
from corx.dosimetry.voi import Voi
from corx.errors import CorxError
from corx.io.dicom_export import write_rtdose
from corx.io.rtstruct import frame_loops, read_rtstruct, write_rtstruct

pydicom = pytest.importorskip("pydicom")
from test_dicom_export import _affine  # noqa: E402


def _label_map(shape: tuple[int, int, int]) -> np.ndarray:
    """Organs with a hole (a ring), a two-part VOI, a one-voxel VOI and shapes touching the array border."""
    rng = np.random.default_rng(4)
    lab = np.zeros(shape, np.uint8)
    blob = ndimage.gaussian_filter(rng.random(shape), 1.2) > 0.5
    lab[blob] = 2
    x, y, _ = np.indices(shape)
    r = np.hypot(x - shape[0] / 2, y - shape[1] / 2)
    lab[(r > 2) & (r < 4.5)] = 4  # a ring on every frame: outer and hole contours
    lab[0:2, 0:3, 1:3] = 6  # at the border
    lab[-2:, -3:, 3:5] = 7  # the other kidney, another component
    lab[shape[0] // 2, shape[1] // 2, shape[2] // 2] = 11
    return lab


VOIS = [Voi("muscle", (2,)), Voi("liver", (4,)), Voi("kidneys", (6, 7)), Voi("tumour_1", (11,)),
        Voi("spleen", (5,))]


def test_frame_loops_trace_holes_and_touching_borders() -> None:
    mask = np.zeros((6, 5), bool)
    mask[:, :] = True
    mask[2:4, 2] = False  # a hole
    loops = frame_loops(mask)
    assert len(loops) == 2
    assert all(loop.shape[1] == 2 and len(loop) >= 3 for loop in loops)


@pytest.mark.parametrize("kind", ["ras", "las", "oblique"])
def test_rtstruct_round_trip_gives_the_masks(tmp_path: Path, kind: str) -> None:
    shape = (14, 12, 9)
    lab, aff = _label_map(shape), _affine(kind)
    frame_uid = "1.2.826.0.1.3680043.8.498.77"
    out = write_rtstruct(lab, aff, VOIS, tmp_path / "voi_rtstruct.dcm", patient_id="P001",
                         frame_of_reference_uid=frame_uid, study_instance_uid="1.2.3")
    masks = read_rtstruct(out, shape, aff)
    assert list(masks) == [v.name for v in VOIS]
    for voi in VOIS:
        np.testing.assert_array_equal(masks[voi.name], np.isin(lab, voi.labels), err_msg=voi.name)
    ds = pydicom.dcmread(str(out))
    assert ds.Modality == "RTSTRUCT" and ds.StudyInstanceUID == "1.2.3" and ds.PatientID == "P001"
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == frame_uid
    assert {r.ReferencedFrameOfReferenceUID for r in ds.StructureSetROISequence} == {frame_uid}
    kinds = {o.ReferencedROINumber: o.RTROIInterpretedType for o in ds.RTROIObservationsSequence}
    assert kinds[4] == "GTV" and kinds[2] == "ORGAN"
    assert not hasattr(ds.ROIContourSequence[4], "ContourSequence") or not ds.ROIContourSequence[4].ContourSequence
    # every contour lies in a plane of the RT Dose written on the same grid
    dose_ds = pydicom.dcmread(str(write_rtdose(np.ones(shape, np.float32), aff, tmp_path / "dose.dcm",
                                               patient_id="P001")))
    ipp = np.array([float(v) for v in dose_ds.ImagePositionPatient])
    iop = np.array([float(v) for v in dose_ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    offsets = np.array([float(v) for v in dose_ds.GridFrameOffsetVector])
    for c in ds.ROIContourSequence[1].ContourSequence:
        xyz = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
        d = (xyz - ipp) @ normal
        assert np.abs(d - d[0]).max() < 1e-2 and np.abs(offsets - d[0]).min() < 1e-2


def test_rtstruct_refuses_overwrite_and_bad_grids(tmp_path: Path) -> None:
    shape = (8, 8, 4)
    lab, aff = _label_map(shape), _affine("ras")
    target = write_rtstruct(lab, aff, VOIS, tmp_path / "s.dcm", patient_id="P")
    with pytest.raises(CorxError, match="already exists"):
        write_rtstruct(lab, aff, VOIS, target, patient_id="P")
    with pytest.raises(CorxError, match="integer"):
        write_rtstruct(lab.astype(np.float32), aff, VOIS, tmp_path / "t.dcm", patient_id="P")
    shifted = aff.copy()
    shifted[2, 3] += 0.5 * aff[2, 2]  # half a frame off: the contours are not on its planes
    with pytest.raises(CorxError, match="does not lie on a frame"):
        read_rtstruct(target, shape, shifted)
    with pytest.raises(CorxError, match="not a readable RT Structure Set"):
        read_rtstruct(write_rtdose(np.ones(shape, np.float32), aff, tmp_path / "d.dcm", patient_id="P"), shape, aff)


def import_dicompyler(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """dicompylercore.dvhcalc; dicompyler-core 0.5.6 imports pydicom.dicomio.read_file, renamed dcmread in
    pydicom 3 (highdicom needs pydicom 3), so the old name is provided for the duration of the test."""
    import pydicom.dicomio

    monkeypatch.setattr(pydicom.dicomio, "read_file", pydicom.dcmread, raising=False)
    for name in [m for m in sys.modules if m.startswith("dicompylercore")]:
        monkeypatch.delitem(sys.modules, name)
    return pytest.importorskip("dicompylercore.dvhcalc")


def dicompyler_dvh(monkeypatch: pytest.MonkeyPatch, rtstruct: Path, rtdose: Path, roi_name: str) -> dict[str, float]:
    """dicompyler-core's DVH statistics (Gy, cm^3) of one ROI."""
    dvhcalc = import_dicompyler(monkeypatch)
    ds = pydicom.dcmread(str(rtstruct))
    number = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == roi_name)
    dvh = dvhcalc.get_dvh(str(rtstruct), str(rtdose), number)
    return {"mean": float(dvh.mean), "max": float(dvh.max), "volume_ml": float(dvh.volume),
            "D50": float(dvh.D50.value), "D2": float(dvh.D2.value), "D98": float(dvh.D98.value)}


def test_dicompyler_gives_corx_dvh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A smooth dose (0-40 Gy) on a 4.8 mm grid and an ellipsoidal kidney pair: mean, D2, D50, D98 and volume
    from dicompyler-core within 1 % of corx's."""
    shape = (40, 34, 30)
    aff = np.diag([-4.8, -4.8, 4.8, 1.0])
    aff[:3, 3] = [96.0, 80.0, -70.0]
    x, y, z = np.indices(shape).astype(np.float64)
    dose = (40.0 * np.exp(-((x - 18) ** 2 + (y - 15) ** 2 + (z - 14) ** 2) / (2 * 8.0**2))).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[((x - 14) / 5) ** 2 + ((y - 16) / 4) ** 2 + ((z - 15) / 7) ** 2 <= 1] = 6
    lab[((x - 26) / 5) ** 2 + ((y - 16) / 4) ** 2 + ((z - 13) / 7) ** 2 <= 1] = 7
    rtdose = write_rtdose(dose, aff, tmp_path / "dose.dcm", patient_id="P", frame_of_reference_uid="1.2.3.9")
    rtstruct = write_rtstruct(lab, aff, [Voi("kidneys", (6, 7))], tmp_path / "voi_rtstruct.dcm", patient_id="P",
                              frame_of_reference_uid="1.2.3.9")
    theirs = dicompyler_dvh(monkeypatch, rtstruct, rtdose, "kidneys")
    inside = np.isin(lab, (6, 7))
    ours = dvh_metrics(dose[inside])
    volume_ml = inside.sum() * 4.8**3 / 1000.0
    assert theirs["volume_ml"] == pytest.approx(volume_ml, rel=0.01)
    for key, theirs_key in (("mean_dose_gy", "mean"), ("d50_gy", "D50"), ("d2_gy", "D2"), ("d98_gy", "D98")):
        assert theirs[theirs_key] == pytest.approx(ours[key], rel=0.01), key

"""DICOM out: RT Dose and Segmentation written by corx.io.dicom_export and read back with the same voxels and geometry
(axis-aligned RAS, LAS and oblique/permuted grids), tags, overwrite refusal and the missing-library message."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from corx.dosimetry.voi import Voi
from corx.errors import CorxError
from corx.io import dicom_export
from corx.io.dicom_export import read_rtdose, read_seg, segment_codes, write_rtdose, write_seg

pydicom = pytest.importorskip("pydicom")  # the 'dicom' and 'dev' extras install pydicom and highdicom

SHAPE = (9, 8, 7)


def _rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.radians(angle_deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _affine(kind: str) -> np.ndarray:
    aff = np.eye(4)
    if kind == "ras":
        aff[:3, :3] = np.diag([2.5, 3.0, 4.0])
        aff[:3, 3] = [-101.25, 37.5, -250.0]
    elif kind == "las":
        aff[:3, :3] = np.diag([-3.5, 3.5, 2.0])
        aff[:3, 3] = [120.0, -80.0, 15.0]
    else:  # oblique and permuted: array axis 0 ~ S, axis 1 ~ -R, axis 2 ~ A (left-handed)
        perm = np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float64)
        aff[:3, :3] = _rotation([1.0, 2.0, 0.5], 17.0) @ perm @ np.diag([4.0, 2.2, 3.1])
        aff[:3, 3] = [12.3, -45.6, 78.9]
    return aff


def _dose() -> np.ndarray:
    rng = np.random.default_rng(1)
    dose = rng.gamma(2.0, 3.0, SHAPE).astype(np.float32)
    dose[0, 0, 0] = 0.0
    return dose


def _same_voxels(data_a: np.ndarray, aff_a: np.ndarray, data_b: np.ndarray, aff_b: np.ndarray, tol: float) -> None:
    """Every voxel of ``a`` lies (within 1e-3 mm) on a voxel centre of ``b`` holding the same value."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in data_a.shape[:3]], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ aff_a[:3, :3].T + aff_a[:3, 3]
    ijk = (world - aff_b[:3, 3]) @ np.linalg.inv(aff_b[:3, :3]).T
    near = np.rint(ijk).astype(int)
    assert np.abs(near @ aff_b[:3, :3].T + aff_b[:3, 3] - world).max() < 1e-3
    assert np.all((near >= 0) & (near < np.array(data_b.shape[:3])))
    values_a = data_a[tuple(idx.T)]
    values_b = data_b[tuple(near.T)]
    assert np.abs(values_a.astype(np.float64) - values_b).max() <= tol


# ------------------------------------------------------------------------------------------------ RT Dose
@pytest.mark.parametrize("kind", ["ras", "las", "oblique"])
def test_rtdose_round_trip(tmp_path: Path, kind: str) -> None:
    dose, aff = _dose(), _affine(kind)
    frame_uid = "1.2.826.0.1.3680043.8.498.1234567890"
    out = write_rtdose(dose, aff, tmp_path / "dose.dcm", patient_id="P001", frame_of_reference_uid=frame_uid)
    ds = pydicom.dcmread(str(out))
    scaling = float(ds.DoseGridScaling)
    tol = scaling / 2 + 1e-12 * float(dose.max())  # + float64 round-off
    assert ds.Modality == "RTDOSE" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.2"
    assert (ds.DoseUnits, ds.DoseType, ds.DoseSummationType) == ("GY", "PHYSICAL", "PLAN")
    assert ds.FrameOfReferenceUID == frame_uid and ds.PatientID == "P001"
    assert ds.BitsAllocated == 32 and ds.PixelRepresentation == 0 and 0 < scaling < 1e-8
    offsets = np.array(ds.GridFrameOffsetVector, dtype=float)
    assert offsets[0] == 0 and np.all(np.diff(offsets) > 0)  # right-handed frame stack
    # a generic reader (IPP/IOP/PixelSpacing/offsets) gets the same voxels at the same places
    back, back_aff = read_rtdose(out)
    _same_voxels(back, back_aff, dose, aff, tol)
    # onto the original grid: the same array and affine
    same, same_aff = read_rtdose(out, like_affine=aff)
    assert same.shape == dose.shape
    assert np.abs(same - dose.astype(np.float64)).max() <= tol
    np.testing.assert_allclose(same_aff, aff, atol=1e-3, rtol=0)


def test_rtdose_axis_aligned_grids_are_axial_stacks(tmp_path: Path) -> None:
    for kind in ("ras", "las"):
        out = write_rtdose(_dose(), _affine(kind), tmp_path / f"{kind}.dcm", patient_id="P001")
        ds = pydicom.dcmread(str(out))
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ _affine(kind)
        corners = [lps[:3, :3] @ (np.array(c) * (np.array(SHAPE) - 1)) + lps[:3, 3] for c in np.ndindex(2, 2, 2)]
        corner = np.min(corners, axis=0)  # columns go +x (L), rows +y (P), frames +z (S)
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], corner, atol=1e-6)
        assert ds.FrameOfReferenceUID.startswith("1.2.") and ds.StudyInstanceUID


def test_rtdose_refuses_overwrite_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "dose.dcm"
    write_rtdose(_dose(), _affine("ras"), target, patient_id="P001")
    before = target.read_bytes()
    with pytest.raises(CorxError, match="already exists"):
        write_rtdose(_dose() * 2, _affine("ras"), target, patient_id="P001")
    assert target.read_bytes() == before
    write_rtdose(_dose() * 2, _affine("ras"), target, patient_id="P001", overwrite=True)
    assert read_rtdose(target)[0].max() == pytest.approx(2 * float(_dose().max()), rel=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dose.dcm"]


def test_rtdose_rejects_bad_input(tmp_path: Path) -> None:
    dose = _dose()
    with pytest.raises(CorxError, match="negative"):
        write_rtdose(dose - 1.0, _affine("ras"), tmp_path / "a.dcm", patient_id="P001")
    with pytest.raises(CorxError, match="NaN"):
        write_rtdose(np.where(dose > 5, np.nan, dose), _affine("ras"), tmp_path / "b.dcm", patient_id="P001")
    sheared = _affine("ras")
    sheared[0, 1] = 1.0
    with pytest.raises(CorxError, match="not orthogonal"):
        write_rtdose(dose, sheared, tmp_path / "c.dcm", patient_id="P001")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ SEG
def _labels() -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[1:5, 2:6, 1:4] = 4  # liver
    lab[6:8, 1:3, 2:6] = 6  # kidney cortex
    lab[6, 2, 3] = 7  # kidney medulla
    lab[2:4, 6:8, 5:7] = 11  # tumour_1
    return lab


@pytest.mark.parametrize("kind", ["las", "oblique"])
def test_seg_round_trip(tmp_path: Path, kind: str) -> None:
    lab, aff = _labels(), _affine(kind)
    vois = [Voi("liver", (4,)), Voi("kidneys", (6, 7)), Voi("tumour_1", (11,)), Voi("spleen", (5,))]
    frame_uid = "1.2.826.0.1.3680043.8.498.42"
    out = write_seg(lab, aff, vois, tmp_path / "vois.dcm", patient_id="P001", frame_of_reference_uid=frame_uid,
                    algorithm="corx phantom generator")
    masks, back_aff = read_seg(out, like_affine=aff)
    assert list(masks) == ["liver", "kidneys", "tumour_1", "spleen"]
    for voi in vois:
        assert masks[voi.name].shape == SHAPE
        assert np.array_equal(masks[voi.name], np.isin(lab, voi.labels)), voi.name
    np.testing.assert_allclose(back_aff, aff, atol=1e-3, rtol=0)
    raw, raw_aff = read_seg(out)  # as stored: the same voxels
    _same_voxels(raw["kidneys"], raw_aff, np.isin(lab, (6, 7)), aff, 0)
    ds = pydicom.dcmread(str(out))
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY" and ds.FrameOfReferenceUID == frame_uid
    tumour = ds.SegmentSequence[2]
    assert tumour.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Neoplasm"
    assert tumour.SegmentAlgorithmType == "AUTOMATIC"


def test_seg_names_as_dict_and_pairs(tmp_path: Path) -> None:
    lab, aff = _labels(), _affine("ras")
    out = write_seg(lab, aff, {4: "liver", 11: "tumour_1"}, tmp_path / "a.dcm", patient_id="P001")
    masks, _ = read_seg(out, like_affine=aff)
    assert np.array_equal(masks["liver"], lab == 4) and np.array_equal(masks["tumour_1"], lab == 11)
    assert pydicom.dcmread(str(out)).SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    out = write_seg(lab, aff, [("kidneys", (6, 7)), ("liver", 4)], tmp_path / "b.dcm", patient_id="P001")
    masks, _ = read_seg(out, like_affine=aff)
    assert np.array_equal(masks["kidneys"], np.isin(lab, (6, 7)))
    with pytest.raises(CorxError, match="already exists"):
        write_seg(lab, aff, {4: "liver"}, out, patient_id="P001")
    with pytest.raises(CorxError, match="unique"):
        write_seg(lab, aff, [("liver", 4), ("liver", 5)], tmp_path / "c.dcm", patient_id="P001")


def test_segment_codes() -> None:
    assert segment_codes("tumour_3")[1].meaning == "Neoplasm"
    assert segment_codes("Liver")[1].meaning == "Liver"
    assert segment_codes("kidneys")[1].meaning == "Kidney"
    category, kind = segment_codes("label_42")
    assert (category.meaning, kind.meaning) == ("Anatomical Structure", "Organ")


# ------------------------------------------------------------------------------------------------ extras
@pytest.mark.parametrize("missing", ["pydicom", "highdicom"])
def test_missing_library_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` raise ImportError
    importlib.reload(dicom_export)  # the module itself imports without the DICOM libraries
    with pytest.raises(CorxError, match=rf"needs {missing}: pip install -e '\.\[dicom\]'"):
        if missing == "pydicom":
            write_rtdose(_dose(), _affine("ras"), tmp_path / "d.dcm", patient_id="P001")
        else:
            write_seg(_labels(), _affine("ras"), {4: "liver"}, tmp_path / "s.dcm", patient_id="P001")


def test_the_dicom_writers_import_no_dosimetry() -> None:
    """The side process imports DICOM_WRITER_MODULES as it starts: they must stay light (no dosimetry, no
    matplotlib, no torch), and the content handed to it pickles without a corx.dosimetry class."""
    import pickle
    import subprocess
    from types import SimpleNamespace

    from corx.dosimetry.workflow import dicom_content
    from corx.io.dicom_outputs import DICOM_WRITER_MODULES

    code = ("import importlib, sys\n"
            f"for name in {DICOM_WRITER_MODULES!r}: importlib.import_module(name)\n"
            "print(sorted({m.split('.')[0] + '.' + m.split('.')[1] if m.startswith('corx.') else m.split('.')[0]\n"
            "              for m in sys.modules} & {'corx.dosimetry', 'corx.pipeline', 'matplotlib', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
    result = SimpleNamespace(dose=None, labels=np.ones((2, 2, 2), np.uint8), vois=[Voi("kidney", (1, 2))])
    content = dicom_content(result)  # type: ignore[arg-type]
    assert content.vois == [("kidney", (1, 2))]
    assert b"corx.dosimetry" not in pickle.dumps(content)

"""DICOM in: CT series and NM (SPECT) multi-frame files written with pydicom from a phantom, read back with the
right geometry (LPS -> RAS, slice order) and units (BQML, Real World Value Mapping, counts x calibration), and
the pipeline's results from the DICOM version equal those from the NIfTI version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from corx.errors import CorxError
from corx.io.inputs import read_volume
from corx.io.manifest import load_manifest
from corx.pipeline.run import run_pipeline

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
STORED_MAX = 65000


FRAME_UID = "1.2.3.4.5"

# ------------------------------------------------------------------------------------------------- writers
def _dataset(path: Path, sop_class: str, modality: str, series_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, series_uid, "1.2.3.4"
    ds.PatientID, ds.PatientName = "P001", "Phantom^P001"
    ds.FrameOfReferenceUID = FRAME_UID
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _plane(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    lps = LPS @ affine
    c0, c1 = lps[:3, 0], lps[:3, 1]
    x, y = c0 / np.linalg.norm(c0), c1 / np.linalg.norm(c1)
    return lps, x, y, [float(np.linalg.norm(c1)), float(np.linalg.norm(c0))]


def write_ct_series(nifti: Path, folder: Path) -> Path:
    """One CT file per slice (stored = HU + 1024, RescaleIntercept -1024), in shuffled file order."""
    img = nib.load(str(nifti))
    hu = np.asarray(img.dataobj, dtype=np.int32)
    lps, x, y, spacing = _plane(img.affine)
    folder.mkdir(parents=True)
    series = generate_uid()
    order = np.random.default_rng(0).permutation(hu.shape[2])
    for n, k in enumerate(order):
        ds = _dataset(folder / f"IM{n:04d}.dcm", CT_STORAGE, "CT", series)
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*x, *y)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.PixelSpacing = [f"{v:.6f}" for v in spacing]
        ds.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.4f}"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.InstanceNumber = int(n + 1)
        ds.PixelData = (hu[:, :, k].T + 1024).clip(0, 65535).astype(np.uint16).tobytes()
        ds.save_as(str(folder / f"IM{n:04d}.dcm"), enforce_file_format=True)
    (folder / "README.txt").write_text("not a DICOM file")
    return folder


def write_nm(nifti: Path, path: Path, units: str, calibration: float | None = None) -> Path:
    """A reconstructed SPECT as one NM multi-frame file; ``units`` "bqml", "rwvm" or "counts"."""
    img = nib.load(str(nifti))
    bqml = np.asarray(img.dataobj, dtype=np.float64)
    lps, x, y, spacing = _plane(img.affine)
    normal = np.cross(x, y)
    ds_mm = float(np.linalg.norm(lps[:3, 2]))
    forward = float(lps[:3, 2] @ normal) > 0  # frames must advance along X x Y
    ks = range(bqml.shape[2]) if forward else range(bqml.shape[2] - 1, -1, -1)
    first = lps[:3, 3] + (0 if forward else bqml.shape[2] - 1) * lps[:3, 2]
    values = bqml
    if units == "counts":
        assert calibration is not None
        voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000.0
        values = bqml * voxel_ml / calibration
    slope = max(float(values.max()), 1e-6) / STORED_MAX
    stored = np.stack([np.rint(values[:, :, k].T / slope) for k in ks]).clip(0, 65535).astype(np.uint16)
    ds = _dataset(path, NM_STORAGE, "NM", generate_uid())
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.NumberOfFrames = stored.shape[0]
    ds.FrameIncrementPointer = 0x00540080
    ds.SliceVector = list(range(1, stored.shape[0] + 1))
    ds.NumberOfSlices = stored.shape[0]
    ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
    ds.PixelSpacing = [f"{v:.6f}" for v in spacing]
    ds.SliceThickness = f"{ds_mm:.5f}"
    ds.SpacingBetweenSlices = f"{ds_mm:.5f}"
    detector = Dataset()
    detector.ImageOrientationPatient = [f"{v:.6f}" for v in (*x, *y)]
    detector.ImagePositionPatient = [f"{v:.4f}" for v in first]
    ds.DetectorInformationSequence = Sequence([detector])
    if units == "rwvm":
        item, code = Dataset(), Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "Bq/ml", "UCUM", "becquerels/milliliter"
        item.MeasurementUnitsCodeSequence = Sequence([code])
        item.RealWorldValueSlope, item.RealWorldValueIntercept = slope, 0.0
        item.RealWorldValueFirstValueMapped, item.RealWorldValueLastValueMapped = 0, 65535
        ds.RealWorldValueMappingSequence = Sequence([item])
    else:
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        ds.Units = "BQML" if units == "bqml" else "CNTS"
    ds.PixelData = stored.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _reorient(data: np.ndarray, affine: np.ndarray, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``data`` flipped/permuted exactly into the axis order of the grid ``like``."""
    t = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                        nib.orientations.io_orientation(like))
    return (nib.orientations.apply_orientation(data, t),
            affine @ nib.orientations.inv_ornt_aff(t, data.shape))


def dicom_patient(patient: Path, target: Path, units: list[str]) -> Path:
    """The patient as DICOM (CT series folders, NM files with the given units per time point)."""
    man = json.loads((patient / "patient.json").read_text())
    target.mkdir(parents=True)
    for tp, unit in zip(man["timepoints"], units, strict=True):
        tid = tp["id"]
        write_ct_series(patient / tp["ct"], target / f"ct_{tid}_dicom")
        calibration = 0.37 if unit == "counts" else None
        write_nm(patient / tp["spect"], target / f"spect_{tid}.dcm", unit, calibration)
        tp["ct"], tp["spect"] = f"ct_{tid}_dicom/", f"spect_{tid}.dcm"
        if calibration is not None:
            tp["calibration_bq_per_count"] = calibration
    shutil.copytree(patient / "truth", target / "truth")
    man.pop("phantom", None)
    (target / "patient.json").write_text(json.dumps(man, indent=1))
    return target / "patient.json"


# --------------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module", params=["internal", "external"])
def patient(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from corx_bundle.scripts.phantom import generate_patient

    return generate_patient(tmp_path_factory.mktemp(request.param), request.param, 0, 7, downsample=2)


@pytest.mark.parametrize("units", ["bqml", "rwvm", "counts"])
def test_nm_geometry_and_units(patient: Path, tmp_path: Path, units: str) -> None:
    nifti = patient / "spect_4h.nii.gz"
    calibration = 2.5 if units == "counts" else None
    path = write_nm(nifti, tmp_path / "spect.dcm", units, calibration)
    vol = read_volume(path, "spect", calibration)
    img = nib.load(str(nifti))
    expected, expected_affine = _reorient(np.asarray(img.dataobj, np.float32), img.affine, vol.affine)
    np.testing.assert_allclose(vol.affine, expected_affine, atol=1e-3)
    np.testing.assert_allclose(vol.data, expected, rtol=0, atol=float(expected.max()) / STORED_MAX)


def test_ct_series_geometry_and_hu(patient: Path, tmp_path: Path) -> None:
    nifti = patient / "ct_24h.nii.gz"
    vol = read_volume(write_ct_series(nifti, tmp_path / "ct"), "ct")
    img = nib.load(str(nifti))
    expected, expected_affine = _reorient(np.asarray(img.dataobj, np.float32), img.affine, vol.affine)
    np.testing.assert_allclose(vol.affine, expected_affine, atol=1e-3)
    np.testing.assert_array_equal(vol.data, expected)


def test_pipeline_on_dicom_matches_nifti(patient: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = len(json.loads((patient / "patient.json").read_text())["timepoints"])
    units = (["bqml", "rwvm", "counts"] * 2)[:n]
    manifest = dicom_patient(patient, tmp_path / "dicom", units)
    assert load_manifest(manifest).timepoints[2].calibration_bq_per_count == 0.37
    a = run_pipeline(patient / "patient.json", tmp_path / "from_nifti", method="identity", progress=False,
                     quiet=True)
    b = run_pipeline(manifest, tmp_path / "from_dicom", method="identity", progress=False, quiet=True)
    for name in ("tia.nii.gz", "dose.nii.gz", "registered/spect_24h.nii.gz"):
        ia, ib = nib.load(str(a.out / name)), nib.load(str(b.out / name))
        da, db = np.asarray(ia.dataobj, np.float32), np.asarray(ib.dataobj, np.float32)
        db_r, affine_r = _reorient(db, ib.affine, ia.affine)
        np.testing.assert_allclose(affine_r, ia.affine, atol=1e-3, err_msg=name)
        # 16-bit DICOM storage quantises the SPECT (step = max / 65000): a few near-zero voxels change their
        # eq.-6 rule; everything else agrees to the quantisation
        close = np.isclose(db_r, da, rtol=0, atol=2e-4 * float(np.abs(da).max()))
        assert close.mean() > 0.999, (name, close.mean())
        assert float(db_r.sum()) == pytest.approx(float(da.sum()), rel=1e-3), name
    va = {r["voi"]: r for r in a.summary["voi"]}
    assert len(va) == len(b.summary["voi"]) > 5
    for row in b.summary["voi"]:
        # rel 5e-3: the eq.-6 rules are discontinuous, so quantisation flips a few voxels (bladder: 0.25 %)
        assert row["tia_voxel_sum_mbqh"] == pytest.approx(va[row["voi"]]["tia_voxel_sum_mbqh"], rel=5e-3)
    ta = {r["voi"]: r for r in a.summary["truth"]}
    for row in b.summary["truth"]:
        assert row["error_vs_imaged_percent"] == pytest.approx(ta[row["voi"]]["error_vs_imaged_percent"], abs=0.5)
    # DICOM out: the dose and the VOIs in the reference CT's study and frame of reference, on the dose grid
    import pydicom

    from corx.io.dicom_export import read_rtdose, read_seg

    rd = pydicom.dcmread(str(b.out / "dose.dcm"))
    assert (rd.Modality, rd.DoseUnits, rd.FrameOfReferenceUID, rd.StudyInstanceUID) == ("RTDOSE", "GY", FRAME_UID,
                                                                                        "1.2.3.4")
    dose_img = nib.load(str(b.out / "dose.nii.gz"))
    dose, dose_affine = read_rtdose(b.out / "dose.dcm", like_affine=dose_img.affine)
    np.testing.assert_allclose(dose_affine, dose_img.affine, atol=1e-3)
    np.testing.assert_allclose(dose, np.asarray(dose_img.dataobj), rtol=0, atol=float(rd.DoseGridScaling))
    assert pydicom.dcmread(str(b.out / "voi_seg.dcm")).FrameOfReferenceUID == FRAME_UID
    masks, _ = read_seg(b.out / "voi_seg.dcm", like_affine=dose_img.affine)
    labels = np.asarray(nib.load(str(b.out / "registered" / "labels_ref.nii.gz")).dataobj)
    assert set(masks) >= {"kidneys", "liver"}
    np.testing.assert_array_equal(masks["kidneys"], np.isin(labels, [6, 7]))
    # the VOIs as RT Structure Set contours on the dose planes: the same masks, and dicompyler-core's kidney DVH
    # from dose.dcm + voi_rtstruct.dcm agrees with corx's voi.csv
    from test_rtstruct import dicompyler_dvh

    from corx.io.rtstruct import read_rtstruct

    rs = pydicom.dcmread(str(b.out / "voi_rtstruct.dcm"))
    assert rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == FRAME_UID
    contoured = read_rtstruct(b.out / "voi_rtstruct.dcm", dose_img.shape, dose_img.affine)
    np.testing.assert_array_equal(contoured["kidneys"], np.isin(labels, [6, 7]))
    theirs = dicompyler_dvh(monkeypatch, b.out / "voi_rtstruct.dcm", b.out / "dose.dcm", "kidneys")
    kidneys = {r["voi"]: r for r in b.summary["voi"]}["kidneys"]
    assert theirs["volume_ml"] == pytest.approx(kidneys["volume_ml"], rel=0.01)
    assert theirs["mean"] == pytest.approx(kidneys["mean_dose_gy"], rel=0.01)
    assert theirs["D50"] == pytest.approx(kidneys["d50_gy"], rel=0.01)
    assert pydicom.dcmread(str(a.out / "dose.dcm")).FrameOfReferenceUID != FRAME_UID  # NIfTI input: a new UID
    # every output lies on the DICOM reference SPECT grid
    ref = read_volume(tmp_path / "dicom" / "spect_4h.dcm", "spect")
    for path in (b.out / "registered").glob("*.nii.gz"):
        img = nib.load(str(path))
        assert img.shape[:3] == ref.data.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)


def test_dicom_errors_name_the_problem(patient: Path, tmp_path: Path) -> None:
    counts = write_nm(patient / "spect_4h.nii.gz", tmp_path / "c.dcm", "counts", 1.0)
    with pytest.raises(CorxError, match="calibration_bq_per_count"):
        read_volume(counts, "spect")
    bqml = write_nm(patient / "spect_4h.nii.gz", tmp_path / "b.dcm", "bqml")
    with pytest.raises(CorxError, match="already in Bq/mL"):
        read_volume(bqml, "spect", 2.0)
    with pytest.raises(CorxError, match="applies only to a DICOM SPECT"):
        read_volume(patient / "spect_4h.nii.gz", "spect", 2.0)
    folder = write_ct_series(patient / "ct_4h.nii.gz", tmp_path / "ct")
    files = sorted(folder.glob("IM*.dcm"))
    ds = pydicom.dcmread(str(files[0]))
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(str(files[0]), enforce_file_format=True)
    with pytest.raises(CorxError, match="2 DICOM series"):
        read_volume(folder, "ct")
    files[0].unlink()
    positions = sorted(float(pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient[2])
                       for f in files[1:])
    middle = next(f for f in files[1:] if float(pydicom.dcmread(str(f), stop_before_pixels=True)
                                                  .ImagePositionPatient[2]) == positions[len(positions) // 2])
    middle.unlink()
    with pytest.raises(CorxError, match="not uniform"):
        read_volume(folder, "ct")


def test_manifest_validation_reads_dicom_headers(patient: Path, tmp_path: Path) -> None:
    n = len(json.loads((patient / "patient.json").read_text())["timepoints"])
    manifest = dicom_patient(patient, tmp_path / "dicom", ["bqml"] * (n - 1) + ["counts"])
    raw = json.loads(manifest.read_text())
    raw["timepoints"][-1].pop("calibration_bq_per_count")
    manifest.write_text(json.dumps(raw))
    with pytest.raises(CorxError, match=r"spect_.*\.dcm: SPECT values are not in Bq/mL.*calibration_bq_per_count"):
        load_manifest(manifest)
    raw["timepoints"][-1]["calibration_bq_per_count"] = -1
    manifest.write_text(json.dumps(raw))
    with pytest.raises(CorxError, match="must be a positive number"):
        load_manifest(manifest)

"""The patient manifest: every validation failure is caught with a message naming the field or file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_nifti
from corx.errors import CorxError
from corx.io.manifest import load_manifest, overlap_fraction


def edit(path: Path, change) -> Path:
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))
    return path


def test_valid_manifest_resolves_paths_relative_to_file(tiny_patient: Path) -> None:
    m = load_manifest(tiny_patient)
    assert m.patient_id == "T001"
    assert [tp.id for tp in m.timepoints] == ["4h", "24h", "48h"]
    assert m.reference_timepoint.spect == (tiny_patient.parent / "spect_4h.nii.gz").resolve()
    assert m.labels == (tiny_patient.parent / "labels.nii.gz").resolve()
    np.testing.assert_array_equal(m.hours, [4.0, 24.0, 48.0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("patient_id"), "missing field 'patient_id'"),
        (lambda r: r.__setitem__("timepoints", []), "at least 1 time point is needed"),
        (lambda r: r.__setitem__("prior_effective_half_life_h", {"kidneys": 50}), "single time point only"),
        (lambda r: (r.__setitem__("timepoints", r["timepoints"][:1]),
                    r.__setitem__("prior_effective_half_life_h", {"kidneys": -1})), "hours > 0"),
        (lambda r: (r.__setitem__("timepoints", r["timepoints"][:1]), r.pop("labels"),
                    r.__setitem__("prior_effective_half_life_h", {"kidneys": 50})), "needs 'labels'"),
        (lambda r: (r.__setitem__("timepoints", [dict(r["timepoints"][0], hours=0)])), "after the injection"),
        (lambda r: r["timepoints"][1].__setitem__("hours", 4.0), "strictly increasing and unique"),
        (lambda r: r["timepoints"].reverse(), "strictly increasing"),
        (lambda r: r.__setitem__("reference", "2h"), "reference '2h' is not one of"),
        (lambda r: r["timepoints"][2].__setitem__("id", "4h"), "ids must be unique"),
        (lambda r: r.__setitem__("injected_activity_mbq", -5), "positive number"),
        (lambda r: r.__setitem__("radionuclide", "Y-90"), "not supported"),
        (lambda r: r["timepoints"][0].pop("ct"), "timepoints[0]: missing field 'ct'"),
        (lambda r: r["timepoints"][1].__setitem__("hours", "late"), "'hours' must be a finite number"),
        (lambda r: r["timepoints"][1].__setitem__("spect", "nope.nii.gz"), "nope.nii.gz: file not found"),
        (lambda r: r.__setitem__("labels", "missing_labels.nii.gz"), "missing_labels.nii.gz: file not found"),
    ],
)
def test_manifest_errors_name_the_problem(tiny_patient: Path, change, message: str) -> None:
    edit(tiny_patient, change)
    with pytest.raises(CorxError, match=None) as info:
        load_manifest(tiny_patient)
    assert message in str(info.value)
    assert str(tiny_patient) in str(info.value) or ".nii.gz" in str(info.value)


def test_missing_and_corrupt_manifest(tmp_path: Path) -> None:
    with pytest.raises(CorxError, match="manifest not found"):
        load_manifest(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CorxError, match="not a valid JSON manifest"):
        load_manifest(bad)


def test_unreadable_image_is_named(tiny_patient: Path) -> None:
    (tiny_patient.parent / "ct_24h.nii.gz").write_bytes(b"garbage")
    with pytest.raises(CorxError, match=r"ct_24h\.nii\.gz: not a readable NIfTI"):
        load_manifest(tiny_patient)


def test_ct_and_spect_must_overlap(tiny_patient: Path) -> None:
    far = np.diag([4.0, 4.0, 4.0, 1.0])
    far[:3, 3] = 5000.0
    write_nifti(tiny_patient.parent / "ct_48h.nii.gz", np.zeros((16, 16, 16), np.int16), far)
    with pytest.raises(CorxError, match="does not overlap its CT ct_48h"):
        load_manifest(tiny_patient)


def test_overlap_fraction_of_shifted_boxes() -> None:
    a = np.eye(4)
    b = np.eye(4)
    b[0, 3] = 5.0  # 11 voxels -> box [0, 10]; shifted box [5, 15]: half overlaps
    assert overlap_fraction((11, 11, 11), a, (11, 11, 11), b) == pytest.approx(0.5)
    assert overlap_fraction((11, 11, 11), a, (11, 11, 11), a) == pytest.approx(1.0)

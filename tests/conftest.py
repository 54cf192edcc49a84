"""Shared fixtures: tiny synthetic images and manifests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

# MONAI runs bundle code as the top-level package `scripts` (bundle root on sys.path); do the same here so that
# configs parsed in-process resolve "scripts.*" targets.
BUNDLE_ROOT = Path(__file__).resolve().parents[1] / "bundle"
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))


@pytest.fixture(autouse=True, scope="session")
def _torchscript_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Scripted networks go to a folder of this test session, not to the user's ~/.cache (shared by the tests,
    like the real cache; subprocesses inherit it)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CORX_CACHE_DIR", str(tmp_path_factory.mktemp("corx_cache")))
    yield
    mp.undo()


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture
def tiny_patient(tmp_path: Path) -> Path:
    """A 3-time-point patient with 8^3 SPECT (8 mm) and 16^3 CT (4 mm) covering the same box."""
    spect_aff = np.diag([8.0, 8.0, 8.0, 1.0])
    ct_aff = np.diag([4.0, 4.0, 4.0, 1.0])
    ct_aff[:3, 3] = -2.0
    rng = np.random.default_rng(0)
    tps = []
    for tid, hours in (("4h", 4.0), ("24h", 24.0), ("48h", 48.0)):
        write_nifti(tmp_path / f"ct_{tid}.nii.gz", rng.normal(0, 10, (16, 16, 16)).astype(np.int16), ct_aff)
        write_nifti(tmp_path / f"spect_{tid}.nii.gz", rng.random((8, 8, 8)).astype(np.float32), spect_aff)
        tps.append({"id": tid, "hours": hours, "ct": f"ct_{tid}.nii.gz", "spect": f"spect_{tid}.nii.gz"})
    write_nifti(tmp_path / "labels.nii.gz", np.ones((8, 8, 8), np.uint8), spect_aff)
    manifest = {"patient_id": "T001", "radionuclide": "Lu-177", "injected_activity_mbq": 7400,
                "reference": "4h", "timepoints": tps, "labels": "labels.nii.gz"}
    path = tmp_path / "patient.json"
    path.write_text(json.dumps(manifest))
    return path

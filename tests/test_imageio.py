"""Atomic writes, refusal to clobber, geometry kept, resampling in world space."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from corx.errors import CorxError
from corx.geometry.resample import resample_to_grid
from corx.io.imageio import atomic_path, read_array, save_image, write_nifti


def test_save_keeps_affine_and_refuses_clobber(tmp_path: Path) -> None:
    affine = np.array([[-2.0, 0, 0, 10], [0, 3.0, 0, -5], [0, 0, 4.0, 7], [0, 0, 0, 1]])
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    target = save_image(data, affine, tmp_path / "a.nii.gz")
    back, back_affine = read_array(target)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, affine)
    assert nib.load(str(target)).header["sform_code"] == 1
    with pytest.raises(CorxError, match="already exists"):
        save_image(data * 2, affine, target)
    np.testing.assert_array_equal(read_array(target)[0], data)  # untouched
    save_image(data * 2, affine, target, overwrite=True)
    np.testing.assert_array_equal(read_array(target)[0], data * 2)


def test_nifti_gz_is_plain_gzip_and_nii_is_uncompressed(tmp_path: Path) -> None:
    """The ISA-L writer makes ordinary gzip (stdlib gzip and nibabel read it back exactly); `.nii` stays raw."""
    rng = np.random.default_rng(0)
    field = rng.normal(size=(20, 18, 16, 3)).astype(np.float32)  # incompressible, like a displacement field
    affine = np.diag([3.9, 3.9, 3.9, 1.0])
    img = nib.Nifti1Image(field, affine)
    write_nifti(img, tmp_path / "f.nii.gz")
    write_nifti(img, tmp_path / "f.nii")
    raw = (tmp_path / "f.nii").read_bytes()
    packed = (tmp_path / "f.nii.gz").read_bytes()
    assert packed[:2] == b"\x1f\x8b" and raw[:4] != b"\x1f\x8b\x08\x00"
    assert gzip.decompress(packed) == raw == img.to_bytes()
    np.testing.assert_array_equal(nib.load(str(tmp_path / "f.nii.gz")).get_fdata(dtype=np.float32), field)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_resample_identity_and_shift() -> None:
    rng = np.random.default_rng(1)
    data = rng.random((6, 7, 8)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    np.testing.assert_allclose(resample_to_grid(data, aff, data.shape, aff), data, atol=1e-6)
    # target grid shifted by one source voxel (2 mm) along i: target[i] = source[i + 1]
    shifted = aff.copy()
    shifted[0, 3] = 2.0
    out = resample_to_grid(data, aff, data.shape, shifted)
    np.testing.assert_allclose(out[:-1], data[1:], atol=1e-6)
    assert np.all(out[-1] == 0)


def test_resample_flipped_axis_grid() -> None:
    """An LAS grid (first axis flipped) sampled onto RAS gives the mirrored array."""
    data = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    ras = np.eye(4)
    las = np.eye(4)
    las[0, 0] = -1.0
    las[0, 3] = 3.0  # voxel i -> x = 3 - i, same box [0, 3]
    out = resample_to_grid(data, las, data.shape, ras, order=0)
    np.testing.assert_array_equal(out, data[::-1])

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


@pytest.mark.parametrize("image_class", [nib.Nifti1Image, nib.Nifti2Image])
def test_read_gz_matches_nibabel_with_scaling(tmp_path: Path, image_class: type) -> None:
    """The ISA-L read of a .nii.gz gives nibabel's own values: int16 with slope/intercept, NIfTI-1 and -2."""
    rng = np.random.default_rng(2)
    raw = rng.integers(-1024, 3000, size=(9, 8, 7)).astype(np.int16)
    affine = np.array([[-2.0, 0, 0, 10], [0, 3.0, 0, -5], [0, 0, 4.0, 7], [0, 0, 0, 1]])
    img = image_class(raw, affine)
    img.header.set_slope_inter(0.5, -3.0)
    target = tmp_path / "ct.nii.gz"
    nib.save(img, str(target))  # nibabel's own (zlib) writer
    data, back_affine = read_array(target)
    expected = np.asarray(nib.load(str(target)).dataobj, dtype=np.float32)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_array_equal(data, raw.astype(np.float32) * 0.5 - 3.0)
    np.testing.assert_allclose(back_affine, affine)


def test_read_truncated_gz_names_the_file(tmp_path: Path) -> None:
    noise = np.random.default_rng(3).random((16, 16, 16)).astype(np.float32)  # incompressible: the cut hits data
    target = save_image(noise, np.eye(4), tmp_path / "spect.nii.gz")
    packed = target.read_bytes()
    target.write_bytes(packed[: len(packed) // 2])  # the header still reads; the data does not
    with pytest.raises(CorxError, match=r"spect\.nii\.gz: image data could not be read"):
        read_array(target)

"""Elastix baseline: parameter maps, the ITK <-> corx geometry and field conversion, small registrations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

itk = pytest.importorskip("itk")
pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")

from corx.geometry.warp import warp_image  # noqa: E402
from corx.registration import elastix as E  # noqa: E402
from corx.registration.preprocess import PreprocessConfig, preprocess_pair  # noqa: E402
from corx.registration.register import Registration  # noqa: E402

FAST = E.ElastixSettings(max_iterations=120, resolutions=2, grid_spacing_mm=30.0, spatial_samples=2048)


def rotation(axis: int, deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def oblique_affine() -> np.ndarray:
    """LAS-like, permuted, slightly rotated, anisotropic: catches any axis/sign slip."""
    perm = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    aff = np.eye(4)
    aff[:3, :3] = rotation(2, 7.0) @ perm @ np.diag([3.0, 2.5, 2.0])
    aff[:3, 3] = [40.0, -25.0, 13.0]
    return aff


def smooth_image(shape: tuple[int, int, int], seed: int = 0, sigma: float = 2.5) -> np.ndarray:
    img = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def transform_map(transform: str, params: list[float], shape: tuple[int, ...], affine: np.ndarray,
                  extra: dict[str, tuple[str, ...]] | None = None) -> object:
    """A hand-written transformix parameter object on the grid (shape, affine)."""
    spacing, direction, origin = E.lps_geometry(affine)
    po = itk.ParameterObject.New()
    pm = po.GetDefaultParameterMap("translation")
    for k in list(pm.keys()):
        del pm[k]
    values = {
        "Transform": (transform,), "NumberOfParameters": (str(len(params)),),
        "TransformParameters": tuple(f"{p:.10f}" for p in params),
        "InitialTransformParameterFileName": ("NoInitialTransform",), "HowToCombineTransforms": ("Compose",),
        "FixedImageDimension": ("3",), "MovingImageDimension": ("3",),
        "FixedInternalImagePixelType": ("float",), "MovingInternalImagePixelType": ("float",),
        "Size": tuple(str(s) for s in shape), "Index": ("0", "0", "0"),
        "Spacing": tuple(f"{s:.10f}" for s in spacing), "Origin": tuple(f"{s:.10f}" for s in origin),
        "Direction": tuple(f"{v:.10f}" for v in direction.T.ravel()),  # ITK order: column-major
        "UseDirectionCosines": ("true",), "ResampleInterpolator": ("FinalLinearInterpolator",),
        "Resampler": ("DefaultResampler",), "DefaultPixelValue": ("0",), "ResultImagePixelType": ("float",),
        "ResultImageFormat": ("nii",), "CompressResultImage": ("false",),
    }
    values.update(extra or {})
    for k, v in values.items():
        pm[k] = v
    po.AddParameterMap(pm)
    return po


def lps_points(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """(3, X, Y, Z) LPS physical coordinates of the voxel centres."""
    idx = np.indices(shape, dtype=np.float64)
    ras = np.einsum("ab,b...->a...", affine[:3, :3], idx) + affine[:3, 3, None, None, None]
    return np.einsum("ab,b...->a...", E.LPS_FLIP, ras)


# ---- parameter maps ------------------------------------------------------------------------------------------
def test_parameter_map_ct_is_plain_ammi() -> None:
    pm = E.parameter_map(E.ElastixSettings(), "ct")
    assert pm["Registration"] == ("MultiResolutionRegistration",)
    assert pm["Metric"] == ("AdvancedMattesMutualInformation",)
    assert pm["Transform"] == ("BSplineTransform",)
    assert pm["MaximumNumberOfIterations"] == ("1000",)
    assert not any("BendingEnergy" in v for vals in pm.values() for v in vals)
    assert "Metric1Weight" not in pm


def test_parameter_map_spect_is_two_ammi() -> None:
    pm = E.parameter_map(E.ElastixSettings(spect_weight=0.5, resolutions=3), "spect")
    assert pm["Registration"] == ("MultiMetricMultiResolutionRegistration",)
    assert pm["Metric"] == ("AdvancedMattesMutualInformation",) * 2
    assert float(pm["Metric1Weight"][0]) == 0.5
    assert len(pm["FixedImagePyramid"]) == len(pm["Interpolator"]) == 2
    assert len(pm["GridSpacingSchedule"]) == 3
    with pytest.raises(Exception, match="unknown Elastix variant"):
        E.parameter_map(E.ElastixSettings(), "mi")


# ---- geometry and field conversion ---------------------------------------------------------------------------
def test_to_itk_geometry_and_values() -> None:
    aff = oblique_affine()
    data = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    img = E.to_itk(data, aff)
    for ijk in [(0, 0, 0), (4, 1, 2), (1, 5, 6)]:
        ras = aff @ np.array([*ijk, 1.0])
        lps = np.array(img.TransformIndexToPhysicalPoint([int(v) for v in ijk]))
        np.testing.assert_allclose(lps, E.LPS_FLIP @ ras[:3], atol=1e-9)
        assert img.GetPixel([int(v) for v in ijk]) == data[ijk]


def test_field_conversion_round_trip() -> None:
    aff = oblique_affine()
    u = np.random.default_rng(1).normal(size=(3, 5, 6, 7)).astype(np.float32)
    back = E.itk_field_to_voxels(E.voxels_to_itk_field(u, aff), aff)
    np.testing.assert_allclose(back, u, atol=1e-5)


@pytest.mark.parametrize("affine", [np.diag([3.0, 2.5, 2.0, 1.0]), oblique_affine()], ids=["ras", "oblique-las"])
def test_known_translation_converts(affine: np.ndarray) -> None:
    shape = (24, 22, 20)
    img = smooth_image(shape)
    t_lps = np.array([3.0, -5.0, 4.0])  # Elastix: T(x) = x + t in LPS mm
    po = transform_map("TranslationTransform", list(t_lps), shape, affine)
    u = E.transform_to_voxels(po, E.to_itk(img, affine), affine)
    expected = np.linalg.solve(affine[:3, :3], E.LPS_FLIP @ t_lps)
    np.testing.assert_allclose(u, np.broadcast_to(expected[:, None, None, None], u.shape), atol=1e-4)
    # the converted field warps like transformix resamples (same pull-back)
    result = itk.transformix_filter(E.to_itk(img, affine), po)
    resampled = np.asarray(itk.array_from_image(result)).transpose(2, 1, 0)
    inner = (slice(4, -4),) * 3
    np.testing.assert_allclose(warp_image(img, u)[inner], resampled[inner], atol=1e-4)


def test_known_affine_converts() -> None:
    aff = oblique_affine()
    shape = (20, 18, 16)
    m = rotation(0, 4.0) @ rotation(1, -3.0) @ np.diag([1.05, 0.97, 1.02])
    t = np.array([2.0, -3.0, 1.5])
    centre = np.array([10.0, -20.0, 30.0])
    po = transform_map("AffineTransform", [*m.ravel(), *t], shape, aff,
                       {"CenterOfRotationPoint": tuple(f"{c:.6f}" for c in centre)})
    u = E.transform_to_voxels(po, E.to_itk(smooth_image(shape), aff), aff)
    x = lps_points(shape, aff)
    tx = np.einsum("ab,b...->a...", m, x - centre[:, None, None, None]) + (centre + t)[:, None, None, None]
    expected = np.einsum("ab,b...->a...", np.linalg.inv(aff[:3, :3]) @ E.LPS_FLIP, tx - x)
    np.testing.assert_allclose(u, expected, atol=1e-3)


# ---- registrations ---------------------------------------------------------------------------------------------
def shifted(img: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """moving with moving(p + shift) = img(p): warping it with u = shift gives img back."""
    return ndimage.shift(img, shift, order=3, mode="nearest").astype(np.float32)


def test_registration_recovers_known_shift() -> None:
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    img = smooth_image((36, 36, 36), seed=3)
    shift = np.array([1.5, -1.0, 0.75])
    u, info = E.elastix_field_arrays([img], [shifted(img, shift)], aff, FAST)
    inner = (slice(None), *(slice(10, -10),) * 3)
    np.testing.assert_allclose(np.median(u[inner].reshape(3, -1), axis=1), shift, atol=0.25)
    assert info["variant"] == "ct" and info["transform_parameters"] > 0 and info["seconds"] > 0


def test_spect_variant_uses_the_spect_pair() -> None:
    """CT pair aligned, SPECT pair shifted, CT weight 0: only the multi-metric variant follows the SPECT."""
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    ct, spect = smooth_image((32, 32, 32), seed=4), smooth_image((32, 32, 32), seed=5)
    shift = np.array([0.0, 1.5, -1.0])
    settings = E.ElastixSettings(**{**FAST.as_dict(), "ct_weight": 0.0, "spect_weight": 1.0})
    u_spect, info = E.elastix_field_arrays([ct, spect], [ct, shifted(spect, shift)], aff, settings)
    assert info["variant"] == "spect"
    inner = (slice(None), *(slice(9, -9),) * 3)
    np.testing.assert_allclose(np.median(u_spect[inner].reshape(3, -1), axis=1), shift, atol=0.3)
    u_ct, _ = E.elastix_field_arrays([ct], [ct], aff, FAST)
    assert np.abs(np.median(u_ct[inner].reshape(3, -1), axis=1)).max() < 0.1


@pytest.fixture(scope="module")
def phantom_patient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from corx_bundle.scripts.phantom import generate_patient

    return generate_patient(tmp_path_factory.mktemp("elx"), "internal", index=0, seed=2, downsample=2,
                            n_timepoints=3)


def test_elastix_register_pair_contract(phantom_patient: Path) -> None:
    """The pipeline's entry point: a Registration on CoRX's network grid, CT better aligned than before."""
    d = phantom_patient
    ids = [tp["id"] for tp in json.loads((d / "patient.json").read_text())["timepoints"] if tp["id"] != "4h"]
    args = (d / "ct_4h.nii.gz", d / f"ct_{ids[0]}.nii.gz", d / "spect_4h.nii.gz", d / f"spect_{ids[0]}.nii.gz")
    cfg = PreprocessConfig(spatial_size=(64, 64, 64), pixdim=(7.74, 7.74, 7.74))
    reg = E.elastix_register_pair(*args, config=cfg, variant="ct", settings=FAST)
    assert isinstance(reg, Registration)
    prepared = preprocess_pair(*args, cfg)
    assert reg.field.shape == (3, 64, 64, 64) and reg.field.dtype == np.float32
    np.testing.assert_allclose(reg.affine, prepared.affine)
    np.testing.assert_allclose(reg.warped_spect, warp_image(prepared.moving_spect_bqml, reg.field), atol=1e-3)
    fixed, moving = prepared.image[0], prepared.image[1]
    assert np.abs(warp_image(moving, reg.field) - fixed).mean() < np.abs(moving - fixed).mean()

"""The thin client's numpy preprocessing equals the bundle's MONAI chain (train.json and inference.json)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from corx.errors import CorxError
from corx.io.volume import Volume
from corx.registration.preprocess import PreprocessConfig, crop_or_pad, normalize_spect, preprocess_pair

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
ROLES = ("fixed_ct", "moving_ct", "fixed_spect", "moving_spect")
TOL = 1e-4


def rotation(deg: float, axis: int) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def affine(spacing: tuple[float, ...], origin: tuple[float, ...], rot: np.ndarray | None = None,
           flips: tuple[int, ...] = (), perm: tuple[int, int, int] = (0, 1, 2)) -> np.ndarray:
    """An affine with spacing, optional rotation, axis flips and an axis permutation (non-RAS storage)."""
    m = np.diag(spacing).astype(float)
    for f in flips:
        m[:, f] *= -1
    m = m[:, list(perm)]
    if rot is not None:
        m = rot @ m
    a = np.eye(4)
    a[:3, :3], a[:3, 3] = m, origin
    return a


def blobs(shape: tuple[int, int, int], seed: int, scale: float, offset: float = 0.0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return (ndimage.gaussian_filter(rng.random(shape), 1.5) * scale + offset).astype(np.float32)


GEOMETRIES = {
    # SPECT already at the network spacing and larger than the network size (centred crop); finer CT grid
    "crop_native_spacing": dict(size=24, pixdim=3.87, spect_shape=(30, 27, 29),
                                spect=affine((3.87,) * 3, (-50, -40, -60)),
                                ct_shape=(50, 44, 30), ct=affine((2.3, 2.3, 3.87), (-52, -41, -61)),
                                moving_shift=(4.0, -3.0, 2.0), norm="minmax"),
    # 4.88 mm SPECT stored LPS-like and permuted, slightly rotated; resampled to 3.87 mm then padded
    "pad_resampled_oblique": dict(size=32, pixdim=3.87, spect_shape=(20, 22, 18),
                                  spect=affine((4.88,) * 3, (40, 50, -30), rotation(7, 2), flips=(0, 1),
                                               perm=(1, 0, 2)),
                                  ct_shape=(40, 36, 26), ct=affine((2.5, 2.7, 3.0), (-45, -55, -35), rotation(-4, 0)),
                                  moving_shift=(-6.0, 5.0, 0.0), norm="log"),
}


def write_case(tmp_path: Path, geo: dict) -> dict[str, str]:
    paths: dict[str, str] = {}
    shift = np.eye(4)
    shift[:3, 3] = geo["moving_shift"]
    for k, role in enumerate(("fixed", "moving")):
        move = np.eye(4) if role == "fixed" else shift
        ct = (blobs(geo["ct_shape"], 10 + k, 3000.0, -1500.0)).astype(np.int16)
        spect = blobs(geo["spect_shape"], 20 + k, 5e4) ** 2 / 5e4
        for name, data, aff in ((f"{role}_ct", ct, geo["ct"]), (f"{role}_spect", spect, geo["spect"])):
            path = tmp_path / f"{name}.nii.gz"
            nib.save(nib.Nifti1Image(data, move @ aff), str(path))
            paths[name] = str(path)
    return paths


def monai_chain(config: str, geo: dict):
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / config))
    parser.update({"spatial_size": [geo["size"]] * 3, "pixdim": [geo["pixdim"]] * 3,
                   "spect_normalization": geo["norm"]})
    chain = parser.get_parsed_content("preprocessing")
    return chain if isinstance(chain, Compose) else Compose(chain)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_numpy_preprocessing_matches_the_monai_chain(tmp_path: Path, name: str) -> None:
    geo = GEOMETRIES[name]
    paths = write_case(tmp_path, geo)
    cfg = PreprocessConfig(spatial_size=(geo["size"],) * 3, pixdim=(geo["pixdim"],) * 3,
                           spect_normalization=geo["norm"])
    ours = preprocess_pair(*(paths[r] for r in ROLES), config=cfg)

    train = monai_chain("train.json", geo)(dict(paths))
    reference = np.concatenate([np.asarray(train[r]) for r in ROLES])
    assert ours.image.shape == reference.shape == (4, *cfg.spatial_size)
    assert ours.image.dtype == np.float32
    np.testing.assert_allclose(ours.image, reference, atol=TOL, rtol=0)
    np.testing.assert_allclose(ours.affine, train["fixed_spect"].affine.numpy(), atol=1e-4)

    infer = monai_chain("inference.json", geo)(dict(paths))
    np.testing.assert_allclose(ours.image, np.asarray(infer["image"]), atol=TOL, rtol=0)
    # the images that get warped keep their units: HU (within 1e-4 relative) and Bq/mL
    ct_hu, spect = np.asarray(infer["warped_ct"])[0], np.asarray(infer["warped_spect"])[0]
    np.testing.assert_allclose(ours.moving_ct_hu, ct_hu, atol=1e-4 * np.abs(ct_hu).max(), rtol=0)
    np.testing.assert_allclose(ours.moving_spect_bqml, spect, atol=1e-4 * spect.max(), rtol=0)


def test_defaults_are_the_bundle_inference_values() -> None:
    raw = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    cfg = PreprocessConfig.from_bundle_config(BUNDLE / "configs" / "inference.json")
    assert cfg == PreprocessConfig()
    assert list(cfg.spatial_size) == raw["spatial_size"] and list(cfg.pixdim) == raw["pixdim"]


def test_crop_or_pad_keeps_world_positions() -> None:
    data = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    aff = affine((2.0, 2.0, 2.0), (1.0, 2.0, 3.0))
    out, out_aff = crop_or_pad(data, aff, (4, 8, 7))
    # voxel (1, 2, 0) of the output is at the world position of the input voxel it came from
    src = np.linalg.solve(aff, out_aff @ np.array([1, 2, 0, 1.0]))[:3]
    assert out[1, 2, 0] == data[tuple(round(v) for v in src)]


def test_normalize_spect_matches_the_bundle() -> None:
    import torch

    from corx_bundle.scripts.transforms import normalize_spect as bundle_normalize

    x = np.array([-1.0, 0.0, 1.0, 10.0, 1000.0], dtype=np.float32)
    for mode in ("minmax", "log"):
        np.testing.assert_allclose(normalize_spect(x, mode), bundle_normalize(torch.from_numpy(x), mode).numpy(),
                                   atol=1e-7)
    with pytest.raises(CorxError, match="unknown SPECT normalisation"):
        normalize_spect(x, "zscore")


def test_invalid_inputs_are_refused_with_the_role_named() -> None:
    good = Volume(np.ones((8, 8, 8), np.float32), np.eye(4))
    with pytest.raises(CorxError, match="moving_ct: expected a non-empty 3-D image"):
        preprocess_pair(good, Volume(np.ones((8, 8), np.float32), np.eye(4)), good, good)
    bad = np.ones((8, 8, 8), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(CorxError, match="fixed_spect: image contains NaN"):
        preprocess_pair(good, good, Volume(bad, np.eye(4)), good)
    far = np.eye(4)
    far[:3, 3] = 1e4
    with pytest.raises(CorxError, match="moving_spect: the image does not overlap"):
        preprocess_pair(good, good, good, Volume(np.ones((8, 8, 8), np.float32), far))
    with pytest.raises(CorxError, match="fixed_ct: the affine must be"):
        preprocess_pair(Volume(np.ones((8, 8, 8), np.float32), np.zeros((4, 4))), good, good, good)
    with pytest.raises(CorxError, match="no positive activity"):
        preprocess_pair(good, good, Volume(np.zeros((8, 8, 8), np.float32), np.eye(4)), good)


def test_the_reference_is_prepared_once_per_patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """ReferenceCache prepares the fixed channels once and gives the same input as preprocess_pair."""
    import corx.registration.methods as methods
    from corx.registration.methods import ReferenceCache

    spect_aff = np.diag([4.0, 4.0, 4.0, 1.0])
    ct_aff = np.diag([2.0, 2.0, 4.0, 1.0])
    fixed_ct = Volume(blobs((24, 24, 12), 1, 800.0, -400.0), ct_aff)
    fixed_spect = Volume(blobs((12, 12, 12), 2, 50.0), spect_aff)
    movings = [(Volume(blobs((24, 24, 12), 3 + i, 800.0, -400.0), ct_aff),
                Volume(blobs((12, 12, 12), 5 + i, 50.0), spect_aff)) for i in range(2)]
    cfg = PreprocessConfig(spatial_size=(16, 16, 16), pixdim=(4.0, 4.0, 4.0))
    calls = []
    real = methods.prepare_reference
    monkeypatch.setattr(methods, "prepare_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = ReferenceCache(cfg)
    for ct, spect in movings:
        ours = cache.pair(fixed_ct, ct, fixed_spect, spect)
        expected = preprocess_pair(fixed_ct, ct, fixed_spect, spect, cfg)
        np.testing.assert_array_equal(ours.image, expected.image)
        np.testing.assert_array_equal(ours.moving_ct_hu, expected.moving_ct_hu)
        np.testing.assert_allclose(ours.affine, expected.affine)
    assert len(calls) == 1
    cache.pair(Volume(fixed_ct.data.copy(), ct_aff), movings[0][0], fixed_spect, movings[0][1])
    assert len(calls) == 2  # another fixed image: prepared again


def _small_patient() -> tuple[list[Volume], PreprocessConfig]:
    spect_aff = np.diag([4.0, 4.0, 4.0, 1.0])
    ct_aff = np.diag([2.0, 2.0, 4.0, 1.0])
    vols = [Volume(blobs((24, 24, 12), seed, 800.0, -400.0), ct_aff) for seed in (1, 3)]
    vols += [Volume(blobs((12, 12, 12), seed, 50.0), spect_aff) for seed in (2, 5)]
    return vols, PreprocessConfig(spatial_size=(16, 16, 16), pixdim=(8.0, 8.0, 8.0))


def test_identity_registers_without_preprocessing() -> None:
    """The identity method's zero field lies on the fixed SPECT grid; the network input is never made."""
    from corx.registration.methods import IdentityMethod, PairInput

    (fixed_ct, moving_ct, fixed_spect, moving_spect), _ = _small_patient()

    class Refusing:
        def pair(self, *args: object) -> None:
            raise AssertionError("identity must not preprocess")

    pair = PairInput.from_volumes(fixed_ct, moving_ct, fixed_spect, moving_spect, Refusing())  # type: ignore[arg-type]
    gf = IdentityMethod().register(pair)
    assert gf.field.shape == (3, 12, 12, 12) and not gf.field.any()
    np.testing.assert_array_equal(gf.affine, fixed_spect.affine)


def test_a_field_on_another_grid_reaches_the_network_grid_in_world_units() -> None:
    """A field on the fixed SPECT grid (4 mm) moved to the network grid (8 mm) keeps its world displacement."""
    from corx.registration.methods import GridField, PairInput, ReferenceCache

    (fixed_ct, moving_ct, fixed_spect, moving_spect), cfg = _small_patient()
    pair = PairInput.from_volumes(fixed_ct, moving_ct, fixed_spect, moving_spect, ReferenceCache(cfg))
    u = np.zeros((3, 12, 12, 12), np.float32)
    u[0] = 2.0  # 2 voxels of 4 mm = 8 mm along x
    u_net = pair.on_network_grid(GridField(u, fixed_spect.affine))
    assert u_net.shape == (3, *cfg.spatial_size)
    np.testing.assert_allclose(u_net[0], 1.0, atol=1e-5)  # 8 mm = one 8-mm network voxel
    np.testing.assert_allclose(u_net[1:], 0.0, atol=1e-6)


def test_network_method_makes_its_backend_once_on_first_use() -> None:
    """A lazily made backend is built at the first registration only; its field comes back on the network grid."""
    from corx.registration.methods import NetworkMethod, PairInput, ReferenceCache, RefinedMethod, RefineOptions

    (fixed_ct, moving_ct, fixed_spect, moving_spect), cfg = _small_patient()
    made = []

    class Shift:
        input_shape = ()

        def infer(self, image: np.ndarray) -> np.ndarray:
            out = np.zeros((3, *image.shape[1:]), np.float32)
            out[2] = 0.5
            return out

        def close(self) -> None:
            pass

    method = NetworkMethod(make_backend=lambda: made.append(1) or Shift(), name="shift")
    assert not made
    cache = ReferenceCache(cfg)
    for _ in range(2):
        gf = method.register(PairInput.from_volumes(fixed_ct, moving_ct, fixed_spect, moving_spect, cache))
        assert gf.field.shape == (3, *cfg.spatial_size) and gf.info["network_seconds"] >= 0.0
        np.testing.assert_allclose(gf.field[2], 0.5)
    assert len(made) == 1
    with pytest.raises(ValueError, match="either a backend or make_backend"):
        NetworkMethod(Shift(), make_backend=Shift)
    refined = RefinedMethod(method, RefineOptions(3, coarsen=2))
    assert refined.name == "shift+refine3" and refined.settings()["refine"]["coarsen"] == 2
    with pytest.raises(CorxError, match="refine steps must be an integer >= 1"):
        RefineOptions(0)

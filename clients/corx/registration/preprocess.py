"""The bundle's preprocessing (configs/inference.json) in numpy/scipy/nibabel, for the thin client.

Same steps, same order, same geometry as the MONAI chain: orientation to RAS; the fixed SPECT resampled to the
network spacing (MONAI ``Spacing``: bilinear, border padding, kept where already within 1e-3 mm); CT window
[-350, 450] HU -> [0, 1] with clipping on the native CT grid; CT and moving SPECT resampled onto the fixed SPECT
grid (bilinear, zero padding, as ``grid_sample``); centred crop/pad to the network size; SPECT min-max (or log)
normalisation; concatenation (fixed CT, moving CT, fixed SPECT, moving SPECT). The moving CT (HU, border padding,
edge pad) and moving SPECT (Bq/mL) are also returned on the network grid, ready to be warped with the field.
tests/test_preprocess.py checks the result against the bundle's MONAI chain.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import CorxError
from ..geometry.resample import affine_resample
from ..io.concurrency import concurrently
from ..io.volume import Volume, load_volume

AFFINE_TOL = 1e-3  # MONAI's tolerance: a spacing within it of the target is kept as it is
SPECT_NORMALISATIONS = ("minmax", "log")
ROLES = ("fixed_ct", "moving_ct", "fixed_spect", "moving_spect")


@dataclass(frozen=True)
class PreprocessConfig:
    """Network geometry and intensity settings (the bundle's inference.json values by default)."""

    spatial_size: tuple[int, int, int] = (128, 128, 128)
    pixdim: tuple[float, float, float] = (3.87, 3.87, 3.87)
    ct_window_hu: tuple[float, float] = (-350.0, 450.0)
    spect_normalization: str = "minmax"
    log_scale: float = 0.01

    def __post_init__(self) -> None:
        if len(self.spatial_size) != 3 or min(self.spatial_size) < 1:
            raise CorxError(f"spatial_size must be 3 positive ints, got {self.spatial_size}")
        if len(self.pixdim) != 3 or min(self.pixdim) <= 0:
            raise CorxError(f"pixdim must be 3 positive spacings, got {self.pixdim}")
        if self.ct_window_hu[1] <= self.ct_window_hu[0]:
            raise CorxError(f"ct_window_hu must be (low, high) with low < high, got {self.ct_window_hu}")
        if self.spect_normalization not in SPECT_NORMALISATIONS:
            raise CorxError(f"unknown SPECT normalisation '{self.spect_normalization}' "
                            f"(choose from {SPECT_NORMALISATIONS})")

    @classmethod
    def from_bundle_config(cls, path: str | os.PathLike, **overrides: object) -> PreprocessConfig:
        """Read the plain values (spatial_size, pixdim, ct_window_hu, spect_normalization) of a bundle config."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CorxError(f"{path}: not a readable bundle config ({exc})") from exc
        values = {
            "spatial_size": tuple(int(v) for v in raw["spatial_size"]),
            "pixdim": tuple(float(v) for v in raw["pixdim"]),
            "ct_window_hu": tuple(float(v) for v in raw["ct_window_hu"]),
            "spect_normalization": str(raw["spect_normalization"]),
        }
        return cls(**{**values, **overrides})  # type: ignore[arg-type]


@dataclass(frozen=True)
class PreparedPair:
    """The network input and what is needed to warp and write the result."""

    image: np.ndarray  # (4, X, Y, Z) float32 in [0, 1]: fixed CT, moving CT, fixed SPECT, moving SPECT
    moving_spect_bqml: np.ndarray  # (X, Y, Z) float32, Bq/mL, on the network grid
    affine: np.ndarray  # (4, 4) affine of the network grid
    moving_ct: Volume  # the moving CT in RAS, HU (source of :attr:`moving_ct_hu`)
    grid: tuple[tuple[int, int, int], np.ndarray]  # the resampling grid (shape, affine) before crop/pad
    size: tuple[int, int, int]  # the network size

    @cached_property
    def moving_ct_hu(self) -> np.ndarray:
        """(X, Y, Z) float32, HU, on the network grid (border padding, edge pad); made when first asked for."""
        hu = resample(self.moving_ct, *self.grid, "border")
        return crop_or_pad(hu, self.grid[1], self.size, mode="edge")[0]


@dataclass(frozen=True)
class PreparedReference:
    """The fixed half of every pair of a patient: the fixed CT and SPECT channels on the network grid."""

    fixed_ct: np.ndarray  # (X, Y, Z) float32 in [0, 1]
    fixed_spect: np.ndarray  # (X, Y, Z) float32 in [0, 1]
    grid: tuple[tuple[int, int, int], np.ndarray]  # resampling grid (shape, affine) before crop/pad
    affine: np.ndarray  # (4, 4) affine of the network grid
    config: PreprocessConfig


def as_volume(value: Volume | str | os.PathLike | tuple[np.ndarray, np.ndarray], role: str) -> Volume:
    """Accept a path, a :class:`Volume` or a (data, affine) pair; validate it as input ``role``."""
    if isinstance(value, (str, os.PathLike)):
        vol = load_volume(value)
    elif isinstance(value, Volume):
        vol = value
    elif isinstance(value, tuple) and len(value) == 2:
        vol = Volume(np.asarray(value[0]), np.asarray(value[1], dtype=np.float64))
    else:
        raise CorxError(f"{role}: expected a NIfTI path, a Volume or (data, affine), got {type(value).__name__}")
    return validate_volume(vol, role)


def validate_volume(vol: Volume, role: str) -> Volume:
    """Check shape, dtype, finiteness and the affine; returns a float32 copy-free view where possible."""
    data = np.asarray(vol.data)
    if data.ndim != 3 or min(data.shape) < 1:
        raise CorxError(f"{role}: expected a non-empty 3-D image, got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise CorxError(f"{role}: expected a numeric image, got dtype {data.dtype}")
    data = data.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        raise CorxError(f"{role}: image contains NaN or infinite values")
    affine = np.asarray(vol.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CorxError(f"{role}: the affine must be a finite, invertible 4x4 matrix")
    return Volume(data, affine)


def to_ras(vol: Volume) -> Volume:
    """Flip/permute the array to the closest RAS orientation (MONAI ``Orientation(axcodes="RAS")``)."""
    current = nib.orientations.io_orientation(vol.affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt("RAS"))
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return vol
    data = nib.orientations.apply_orientation(vol.data, transform)
    affine = vol.affine @ nib.orientations.inv_ornt_aff(transform, vol.data.shape)
    return Volume(np.ascontiguousarray(data), affine)


def spacing_grid(shape: tuple[int, ...], affine: np.ndarray,
                 pixdim: tuple[float, ...]) -> tuple[tuple[int, int, int], np.ndarray]:
    """Output shape and affine of MONAI ``Spacing(pixdim, diagonal=False, scale_extent=False)``."""
    rzs = affine[:3, :3]
    current = np.sqrt((rzs**2).sum(axis=0))
    target = np.array([c if abs(c - p) <= AFFINE_TOL else p for c, p in zip(current, pixdim, strict=True)])
    zs = np.linalg.cholesky(rzs.T @ rzs).T
    rotation = rzs @ np.linalg.inv(zs)
    new_affine = np.eye(4)
    new_affine[:3, :3] = rotation @ np.diag(np.sign(np.diag(zs)) * np.abs(target))
    # corners of the input grid in output voxels: the output covers them, starting at the smallest corner
    corners = np.array(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones((1, corners.shape[1]))])
    out_corners = np.linalg.solve(new_affine, affine) @ corners
    world = affine @ corners
    out_shape = np.round(np.ptp(out_corners[:3] / out_corners[3], axis=1) + 1.0).astype(int)
    offset = None
    for i in range(corners.shape[1]):
        if np.allclose(np.min(out_corners[:3] - out_corners[:3, i : i + 1], axis=1), 0.0, rtol=AFFINE_TOL):
            offset = world[:3, i]
            break
    if offset is None:  # no corner is the smallest along every axis: centre the output on the input
        offset = affine[:3, :3] @ (np.array(shape) / 2.0) + affine[:3, 3] - new_affine[:3, :3] @ (out_shape / 2.0)
    new_affine[:3, 3] = offset
    return (int(out_shape[0]), int(out_shape[1]), int(out_shape[2])), new_affine


def resample(vol: Volume, shape: tuple[int, ...], affine: np.ndarray, padding: str) -> np.ndarray:
    """Trilinear resampling of ``vol`` at the voxel centres of (shape, affine), like MONAI's ``grid_sample``.

    ``padding`` "zeros": outside voxels count as 0 in the interpolation (``grid-constant``); "border": coordinates
    are clamped to the image (``nearest``). A grid equal to the input's (within 1e-3) returns the data as it is.
    """
    xform = np.linalg.solve(vol.affine, affine)
    if tuple(shape) == vol.data.shape and np.allclose(xform, np.eye(4), atol=AFFINE_TOL):
        return vol.data.astype(np.float32, copy=True)
    mode = {"zeros": "grid-constant", "border": "nearest"}[padding]
    return affine_resample(vol.data.astype(np.float32, copy=False), xform, shape, order=1, mode=mode)


def crop_or_pad(data: np.ndarray, affine: np.ndarray, size: tuple[int, int, int],
                mode: str = "constant") -> tuple[np.ndarray, np.ndarray]:
    """Centred crop, then symmetric pad, to ``size`` (MONAI ``ResizeWithPadOrCrop``); returns (data, affine)."""
    starts = [max(n // 2 - s // 2, 0) for n, s in zip(data.shape, size, strict=True)]
    data = data[tuple(slice(b, b + s) for b, s in zip(starts, size, strict=True))]
    before = [max(s - n, 0) // 2 for n, s in zip(data.shape, size, strict=True)]
    widths = [(b, max(s - n, 0) - b) for b, n, s in zip(before, data.shape, size, strict=True)]
    if any(w != (0, 0) for w in widths):
        data = np.pad(data, widths, mode=mode)
    shift = np.eye(4)
    shift[:3, 3] = np.array(starts, dtype=np.float64) - np.array(before, dtype=np.float64)
    return np.ascontiguousarray(data), affine @ shift


def window_ct(data: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU -> [0, 1] over ``window`` with clipping (MONAI ``ScaleIntensityRange``, b = [0, 1], clip)."""
    lo, hi = float(window[0]), float(window[1])
    out = np.subtract(data, np.float32(lo), dtype=np.float32)  # one new array (a CT is 40 MB), then in place
    out /= np.float32(hi - lo)
    return np.clip(out, np.float32(0.0), np.float32(1.0), out=out)


def normalize_spect(data: np.ndarray, mode: str = "minmax", log_scale: float = 0.01) -> np.ndarray:
    """SPECT -> [0, 1]: min-max, or log(1 + x / (log_scale * max)) then min-max (bundle ``normalize_spect``)."""
    if mode not in SPECT_NORMALISATIONS:
        raise CorxError(f"unknown SPECT normalisation '{mode}' (choose from {SPECT_NORMALISATIONS})")
    x = np.maximum(data.astype(np.float32), np.float32(0.0))
    if mode == "log":
        x = np.log1p(x / max(np.float32(log_scale) * x.max(), np.float32(1e-12)))
    lo, hi = x.min(), x.max()
    return ((x - lo) / max(hi - lo, np.float32(1e-12))).astype(np.float32)


def _check_overlap(vol: Volume, grid_shape: tuple[int, ...], grid_affine: np.ndarray, role: str) -> None:
    """Refuse an image whose box does not meet the network grid's box at all."""
    def box(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in shape], indexing="ij")).reshape(3, -1)
        world = affine[:3, :3] @ corners + affine[:3, 3:4]
        return world.min(axis=1), world.max(axis=1)

    lo1, hi1 = box(vol.data.shape, vol.affine)
    lo2, hi2 = box(grid_shape, grid_affine)
    if np.any(hi1 <= lo2) or np.any(hi2 <= lo1):
        raise CorxError(f"{role}: the image does not overlap the fixed SPECT in space (check the affines)")


def _pair_on_grid(ct: Volume, spect: Volume, grid: tuple[tuple[int, int, int], np.ndarray], cfg: PreprocessConfig,
                  spect_padding: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windowed CT (zero padding) and SPECT (``spect_padding``) resampled at once onto ``grid``, then cropped or
    padded to the network size; returns (ct, spect, network-grid affine)."""
    shape, affine = grid
    size = tuple(int(s) for s in cfg.spatial_size)
    ct_g, spect_g = concurrently(
        lambda: resample(Volume(window_ct(ct.data, cfg.ct_window_hu), ct.affine), shape, affine, "zeros"),
        lambda: resample(spect, shape, affine, spect_padding))
    ct_c, net_affine = crop_or_pad(ct_g, affine, size)  # type: ignore[arg-type]
    spect_c, _ = crop_or_pad(spect_g, affine, size)  # type: ignore[arg-type]
    return ct_c, spect_c, net_affine


def prepare_reference(fixed_ct: object, fixed_spect: object,
                      config: PreprocessConfig | None = None) -> PreparedReference:
    """The fixed channels of the bundle's inference preprocessing, made once per patient."""
    cfg = config or PreprocessConfig()
    ct, spect = to_ras(as_volume(fixed_ct, "fixed_ct")), to_ras(as_volume(fixed_spect, "fixed_spect"))
    shape, grid = spacing_grid(spect.data.shape, spect.affine, cfg.pixdim)
    _check_overlap(ct, shape, grid, "fixed_ct")
    if not np.any(spect.data > 0):
        raise CorxError("fixed_spect: the SPECT image has no positive activity")
    ct_c, spect_c, affine = _pair_on_grid(ct, spect, (shape, grid), cfg, spect_padding="border")
    return PreparedReference(fixed_ct=ct_c, fixed_spect=normalize_spect(spect_c, cfg.spect_normalization,
                                                                        cfg.log_scale),
                             grid=(shape, grid), affine=affine, config=cfg)


def prepare_moving(reference: PreparedReference, moving_ct: object, moving_spect: object) -> PreparedPair:
    """The network input of one moving (CT, SPECT) against a :func:`prepare_reference` result."""
    cfg = reference.config
    ct, spect = to_ras(as_volume(moving_ct, "moving_ct")), to_ras(as_volume(moving_spect, "moving_spect"))
    shape, grid = reference.grid
    for vol, role in ((ct, "moving_ct"), (spect, "moving_spect")):
        _check_overlap(vol, shape, grid, role)
    if not np.any(spect.data > 0):
        raise CorxError("moving_spect: the SPECT image has no positive activity")
    ct_c, spect_bqml, affine = _pair_on_grid(ct, spect, (shape, grid), cfg, spect_padding="zeros")
    size = tuple(int(s) for s in cfg.spatial_size)
    image = np.stack([reference.fixed_ct, ct_c, reference.fixed_spect,
                      normalize_spect(spect_bqml, cfg.spect_normalization, cfg.log_scale)]).astype(np.float32)
    return PreparedPair(image=image, moving_spect_bqml=spect_bqml, affine=affine, moving_ct=ct,
                        grid=(shape, grid), size=size)  # type: ignore[arg-type]


def preprocess_pair(fixed_ct: object, moving_ct: object, fixed_spect: object, moving_spect: object,
                    config: PreprocessConfig | None = None) -> PreparedPair:
    """Run the bundle's inference preprocessing on one pair; inputs are paths, Volumes or (data, affine)."""
    return prepare_moving(prepare_reference(fixed_ct, fixed_spect, config), moving_ct, moving_spect)

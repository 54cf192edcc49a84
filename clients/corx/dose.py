"""Absorbed dose from a TIA map by local energy deposition (LED), with voxel mass from CT.

D [Gy] = 0.08532 * TIA [MBq h] / m [g] per voxel (177Lu electrons, 0.14792 MeV per decay, ICRP 107; photons,
0.0351 MeV per decay, are assumed to escape). With TIA per mL and density rho in g/mL the voxel volume cancels:
D = 0.08532 * TIA[MBq h/mL] / rho.

Mass density: the CT (HU) is converted with the Schneider 2000 table (corx.physics) on its own grid, then
resampled onto the SPECT grid with corx.resample.resample_to_grid (trilinear; outside the CT field of view: air)
at several sub-points per SPECT voxel and averaged, so that each SPECT voxel gets its mean density (mass).

Air handling: only voxels inside the body get a dose; the body is where the averaged density exceeds 0.5 g/mL
(about -500 HU), with enclosed holes (lungs, bowel gas) filled slice by slice along the axial axis. Inside the
body the density is floored at ``min_density`` (0.1 g/mL, below inflated lung): a voxel of gas inside the body
cannot get a dose 800 times that of water. Activity outside the body (SPECT spill-out) is given no dose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import CorxError
from .physics import DOSE_GY_G_PER_MBQH, hu_to_density
from .resample import resample_to_grid

BODY_DENSITY = 0.5
MIN_DENSITY = 0.1
DOSE_MODES = ("led",)


@dataclass
class DoseResult:
    """Dose map and the density / body mask it was computed with (all on the TIA grid)."""

    dose_gy: np.ndarray      # float32
    density: np.ndarray      # float32, g/mL, before the floor
    body: np.ndarray         # bool


def axial_axis(affine: np.ndarray) -> int:
    """Array axis closest to the world superior-inferior direction."""
    return int(np.argmax(np.abs(np.asarray(affine)[2, :3])))


def body_mask(density: np.ndarray, affine: np.ndarray, threshold: float = BODY_DENSITY) -> np.ndarray:
    """Voxels denser than ``threshold`` with holes filled in every axial slice (lungs, bowel gas)."""
    mask = density > threshold
    structure = np.zeros((3, 3, 3), dtype=bool)
    ax = axial_axis(affine)
    index = [slice(None)] * 3
    index[ax] = 1
    structure[tuple(index)] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(mask, structure=structure)


def density_on_grid(ct_hu: np.ndarray, ct_affine: np.ndarray, shape: tuple[int, ...],
                    affine: np.ndarray, max_subsamples: int = 3) -> np.ndarray:
    """Mass density (g/mL) of the CT averaged over each target voxel, on the target grid.

    HU are converted to density on the CT grid, then sampled trilinearly at s_i sub-points per target axis
    (s_i = target spacing / CT spacing rounded up, at most ``max_subsamples``) and averaged: the mean
    density of the target voxel, i.e. its mass / volume.
    """
    rho = hu_to_density(ct_hu)
    target = np.asarray(affine, float)
    m = np.linalg.inv(np.asarray(ct_affine, float)[:3, :3]) @ target[:3, :3]
    footprint = np.abs(m).sum(axis=0)  # extent of one target voxel along each target axis, in CT voxels
    subs = [int(min(max_subsamples, max(1, np.ceil(f - 1e-6)))) for f in footprint]
    air = float(hu_to_density(np.array([-1000.0]))[0])
    acc = np.zeros(tuple(shape[:3]), np.float64)
    offsets = [(np.arange(s) + 0.5) / s - 0.5 for s in subs]
    for di in offsets[0]:
        for dj in offsets[1]:
            for dk in offsets[2]:
                shifted = target.copy()
                shifted[:3, 3] = target[:3, :3] @ np.array([di, dj, dk]) + target[:3, 3]
                acc += resample_to_grid(rho, ct_affine, shape, shifted, order=1, cval=air)
    return (acc / np.prod(subs)).astype(np.float32)


def dose_from_tia(tia_mbqh_per_ml: np.ndarray, density: np.ndarray, body: np.ndarray | None = None,
                  min_density: float = MIN_DENSITY, mode: str = "led") -> np.ndarray:
    """LED dose (Gy) from TIA (MBq*h/mL) and density (g/mL) on the same grid; 0 outside ``body``."""
    if mode not in DOSE_MODES:
        raise CorxError(f"dose mode '{mode}' is not implemented (available: {', '.join(DOSE_MODES)}); "
                        f"dose-voxel-kernel convolution is not provided: 177Lu electrons have a mean range "
                        f"of ~0.3 mm (max 1.8 mm), far below SPECT voxels of ~4 mm, so LED differs from it "
                        f"by a few percent only")
    if tia_mbqh_per_ml.shape != density.shape:
        raise CorxError(f"TIA grid {tia_mbqh_per_ml.shape} and density grid {density.shape} differ")
    if min_density <= 0:
        raise CorxError(f"min_density must be > 0, got {min_density}")
    rho = np.maximum(density, np.float32(min_density))
    dose = (np.float32(DOSE_GY_G_PER_MBQH) * tia_mbqh_per_ml / rho).astype(np.float32)
    if body is not None:
        if body.shape != dose.shape:
            raise CorxError(f"body mask grid {body.shape} and TIA grid {dose.shape} differ")
        dose[~body] = 0
    return dose


def dose_from_ct(tia_mbqh_per_ml: np.ndarray, tia_affine: np.ndarray, ct_hu: np.ndarray,
                 ct_affine: np.ndarray, min_density: float = MIN_DENSITY, mode: str = "led") -> DoseResult:
    """LED dose on the TIA grid with mass from a CT on its own grid (see module docstring)."""
    density = density_on_grid(ct_hu, ct_affine, tia_mbqh_per_ml.shape, tia_affine)
    body = body_mask(density, tia_affine)
    dose = dose_from_tia(tia_mbqh_per_ml, density, body, min_density=min_density, mode=mode)
    return DoseResult(dose_gy=dose, density=density, body=body)


#: Kidney absorbed-dose limit of external-beam radiotherapy used in PRRT planning (23 Gy; Emami et al. 1991,
#: as adopted for 177Lu-DOTATATE by Bodei et al. 2008): V23Gy = % of the VOI receiving at least this dose.
KIDNEY_LIMIT_GY = 23.0
DVH_METRICS = ("mean_dose_gy", "dmax_gy", "d2_gy", "d50_gy", "d98_gy", "v23gy_pct")


def dvh_metrics(dose_values: np.ndarray) -> dict[str, float]:
    """Mean and maximum dose, D2/D50/D98 (minimum dose to the hottest 2/50/98 % of the voxels), Gy, and V23Gy
    (% of the voxels at or above :data:`KIDNEY_LIMIT_GY`)."""
    d = np.asarray(dose_values, dtype=np.float64).ravel()
    if d.size == 0:
        return dict.fromkeys(DVH_METRICS, float("nan"))
    d2, d50, d98 = np.percentile(d, [98.0, 50.0, 2.0])
    return {"mean_dose_gy": float(d.mean()), "dmax_gy": float(d.max()), "d2_gy": float(d2), "d50_gy": float(d50),
            "d98_gy": float(d98), "v23gy_pct": 100.0 * float((d >= KIDNEY_LIMIT_GY).mean())}


def cumulative_dvh(dose_by_voi: dict[str, np.ndarray], n_bins: int = 200) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cumulative DVHs on one dose axis: (dose bins in Gy from 0 to the largest VOI maximum, {VOI: % of its
    voxels receiving at least each bin's dose}). Every voxel has the same volume on one grid, so % of voxels is
    % of volume."""
    top = max((float(np.max(d)) for d in dose_by_voi.values() if np.size(d)), default=0.0)
    bins = np.linspace(0.0, top if top > 0 else 1.0, n_bins + 1)
    curves = {}
    for name, values in dose_by_voi.items():
        d = np.sort(np.asarray(values, dtype=np.float64).ravel())
        at_least = d.size - np.searchsorted(d, bins, side="left")  # voxels with dose >= bin
        curves[name] = 100.0 * at_least / max(d.size, 1)
    return bins, curves

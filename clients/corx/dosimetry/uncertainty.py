"""Per-VOI uncertainty of the TIA and the absorbed dose: fit, calibration and volume, combined in quadrature.

Following the EANM guidance on uncertainty analysis in MRT dosimetry (Gear et al. 2018, EJNMMI 45:2456), the
relative standard uncertainties of independent inputs are combined in quadrature:

* fit: the mono-exponential fit of the VOI's mean time-activity curve (covariance of the least-squares solution,
  corx.dosimetry.tia.monoexp_tia_sd; none when the curve was integrated by the trapezoid rule or with < 3 time points);
* calibration: the SPECT calibration factor's relative uncertainty from the manifest
  (``calibration_uncertainty_percent``), fully correlated over the time points, so it enters the TIA once;
* volume: the VOI boundary is uncertain by ``boundary_sd_voxels`` voxels (default 0.5) along its normal,
  the same shift all around (a systematic delineation error), so u(V) = surface area x boundary SD; the surface
  is counted from the VOI's exposed voxel faces. It enters the dose through the mass (D = TIA x k / m), not the TIA.

u(TIA) = sqrt(u_fit^2 + u_cal^2), u(D) = sqrt(u_fit^2 + u_cal^2 + u_V^2), all relative, in percent; NaN where
the fit part is not available (trapezoid rule, single time point): the curve-shape uncertainty is unknown there,
not zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_BOUNDARY_SD_VOXELS = 0.5
UNCERTAINTY_COLUMNS = ("tia_fit_sd_percent", "calibration_sd_percent", "volume_sd_percent", "tia_voi_sd_percent",
                       "dose_voi_sd_percent")


def surface_area_mm2(mask: np.ndarray, voxel_mm: Sequence[float]) -> float:
    """Area (mm^2) of the exposed voxel faces of ``mask`` (faces between the mask and its outside)."""
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    sx, sy, sz = (float(v) for v in voxel_mm)
    face_area = (sy * sz, sx * sz, sx * sy)  # a face normal to axis i
    return float(sum(np.count_nonzero(np.diff(m, axis=i)) * face_area[i] for i in range(3)))


def volume_sd_percent(mask: np.ndarray, voxel_mm: Sequence[float],
                      boundary_sd_voxels: float = DEFAULT_BOUNDARY_SD_VOXELS) -> float:
    """Relative SD (%) of the VOI volume for a boundary uncertain by ``boundary_sd_voxels`` mean voxel sizes."""
    n = int(np.count_nonzero(mask))
    if n == 0:
        return math.nan
    vox = [float(v) for v in voxel_mm]
    volume = n * vox[0] * vox[1] * vox[2]
    shift_mm = boundary_sd_voxels * float(np.mean(vox))
    return 100.0 * surface_area_mm2(mask, vox) * shift_mm / volume


def combine_percent(*parts: float) -> float:
    """Quadrature sum of relative uncertainties (%); NaN when a part is unknown (e.g. no fit): an unknown
    component is not reported as zero."""
    return math.sqrt(sum(p * p for p in parts))


def voi_uncertainty_columns(fit_sd_percent: float, mask: np.ndarray, voxel_mm: Sequence[float],
                            calibration_sd_percent: float = 0.0,
                            boundary_sd_voxels: float = DEFAULT_BOUNDARY_SD_VOXELS) -> dict[str, float]:
    """The :data:`UNCERTAINTY_COLUMNS` of one VOI (module docstring); ``fit_sd_percent`` NaN when not fitted."""
    vol = volume_sd_percent(mask, voxel_mm, boundary_sd_voxels)
    return {"tia_fit_sd_percent": fit_sd_percent, "calibration_sd_percent": float(calibration_sd_percent),
            "volume_sd_percent": vol,
            "tia_voi_sd_percent": combine_percent(fit_sd_percent, calibration_sd_percent),
            "dose_voi_sd_percent": combine_percent(fit_sd_percent, calibration_sd_percent, vol)}

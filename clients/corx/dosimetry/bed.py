"""Biologically effective dose (BED) and EQD2 from the absorbed dose and the fitted effective decay.

For a dose rate that decays mono-exponentially with effective half-life T_eff and tissue repair half-time T_rep,
the Lea-Catcheside factor is T_rep / (T_rep + T_eff) (Dale 1985), so

    BED = D + D^2 * (T_rep / (T_rep + T_eff)) / (alpha/beta),        EQD2 = BED / (1 + 2 Gy / (alpha/beta)).

Per voxel, T_eff = ln 2 / lambda_eff of the voxel's mono-exponential fit (:mod:`corx.dosimetry.tia`); voxels without
a fit (trapezoid rules, background) take the physical half-life of 177Lu, the longest T_eff possible and so the smallest
BED correction (the share of such voxels is reported). Tissue parameters by VOI: a voxel of a VOI named
``kidney*`` gets the kidney values, ``tumour*``/``tumor*``/``lesion*`` the tumour values, any other voxel the
"other" values. Defaults with their sources: ``corx/data/radiobiology.json``. Bi-exponential BED (for voxels
where the multi-model fit chose a bi-exponential) is not implemented: the mono-exponential T_eff is used.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorxError
from .physics import LU177_HALF_LIFE_H
from .voi import Voi

TISSUES = ("kidneys", "tumours", "other")
TUMOUR_PREFIXES = ("tumour", "tumor", "lesion")


@dataclass(frozen=True)
class TissueLQ:
    """Linear-quadratic parameters of one tissue."""

    alpha_beta_gy: float
    t_rep_h: float


def load_radiobiology(override: str | os.PathLike | None = None) -> dict[str, TissueLQ]:
    """The default tissue parameters, updated from ``override`` (a JSON file of the same layout)."""
    table = json.loads(resources.files("corx").joinpath("data", "radiobiology.json").read_text())
    if override is not None:
        try:
            extra = json.loads(Path(override).read_text())
        except (OSError, ValueError) as err:
            raise CorxError(f"{override}: cannot read radiobiology parameters ({err})") from err
        unknown = sorted(set(extra) - set(TISSUES) - {k for k in extra if k.startswith("_")})
        if unknown:
            raise CorxError(f"{override}: unknown tissue(s) {unknown} (expected {', '.join(TISSUES)})")
        for tissue, values in extra.items():
            if not tissue.startswith("_"):
                table[tissue] = {**table[tissue], **values}
    params = {}
    for tissue in TISSUES:
        ab, t_rep = float(table[tissue]["alpha_beta_gy"]), float(table[tissue]["t_rep_h"])
        if not (ab > 0 and t_rep > 0 and math.isfinite(ab) and math.isfinite(t_rep)):
            raise CorxError(f"radiobiology '{tissue}': alpha_beta_gy and t_rep_h must be positive, got {ab}, {t_rep}")
        params[tissue] = TissueLQ(ab, t_rep)
    return params


def tissue_of(voi_name: str) -> str:
    """The tissue class of a VOI name."""
    name = voi_name.lower()
    if name.startswith("kidney"):
        return "kidneys"
    return "tumours" if name.startswith(TUMOUR_PREFIXES) else "other"


def bed_gy(dose_gy: np.ndarray | float, t_eff_h: np.ndarray | float, alpha_beta_gy: np.ndarray | float,
           t_rep_h: np.ndarray | float) -> np.ndarray:
    """BED (Gy) of a mono-exponentially decaying dose rate (Lea-Catcheside factor T_rep / (T_rep + T_eff))."""
    d = np.asarray(dose_gy, dtype=np.float64)
    g = np.asarray(t_rep_h, dtype=np.float64) / (np.asarray(t_rep_h, dtype=np.float64) + np.asarray(t_eff_h))
    return d + d * d * g / np.asarray(alpha_beta_gy, dtype=np.float64)


def eqd2_gy(bed: np.ndarray | float, alpha_beta_gy: np.ndarray | float) -> np.ndarray:
    """Equivalent dose in 2 Gy fractions from a BED."""
    return np.asarray(bed, dtype=np.float64) / (1.0 + 2.0 / np.asarray(alpha_beta_gy, dtype=np.float64))


@dataclass
class BedResult:
    """BED map (float32, Gy) on the dose grid, and how many voxels fell back to the physical half-life."""

    bed_gy: np.ndarray
    t_eff_fallback_fraction: float
    params: dict[str, TissueLQ]


def effective_half_life_h(lambda_eff_per_h: np.ndarray | float) -> np.ndarray:
    """ln 2 / lambda_eff (h); the physical half-life where there is no fit or the fit is not a decay."""
    lam = np.asarray(lambda_eff_per_h, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(np.isfinite(lam) & (lam > 0), math.log(2.0) / lam, LU177_HALF_LIFE_H)
    return np.minimum(t, LU177_HALF_LIFE_H)


def bed_map(dose_gy: np.ndarray, lambda_eff_per_h: np.ndarray, labels: np.ndarray | None = None,
            vois: Sequence[Voi] = (), params: dict[str, TissueLQ] | None = None) -> BedResult:
    """Voxel BED with tissue parameters from the VOIs (see the module docstring)."""
    params = params or load_radiobiology()
    ab = np.full(dose_gy.shape, params["other"].alpha_beta_gy)
    t_rep = np.full(dose_gy.shape, params["other"].t_rep_h)
    if labels is not None:
        for voi in vois:
            tissue = params[tissue_of(voi.name)]
            inside = np.isin(labels, voi.labels)
            ab[inside], t_rep[inside] = tissue.alpha_beta_gy, tissue.t_rep_h
    fitted = np.isfinite(lambda_eff_per_h) & (lambda_eff_per_h > 0)
    dosed = dose_gy > 0
    fallback = float((dosed & ~fitted).sum() / max(int(dosed.sum()), 1))
    bed = bed_gy(dose_gy, effective_half_life_h(lambda_eff_per_h), ab, t_rep).astype(np.float32)
    return BedResult(bed_gy=bed, t_eff_fallback_fraction=fallback, params=params)


def voi_bed_columns(row: dict[str, Any], voi: Voi, bed: np.ndarray, labels: np.ndarray,
                    params: dict[str, TissueLQ]) -> dict[str, float]:
    """Per-VOI columns: BED of the VOI mean dose with the VOI's effective half-life, its EQD2, and the voxel
    mean of the BED map."""
    tissue = params[tissue_of(voi.name)]
    dose = row.get("dose_voi_gy", row.get("mean_dose_gy", math.nan))
    t_eff = float(effective_half_life_h(row.get("voi_lambda_eff_per_h", math.nan)))
    bed_voi = float(bed_gy(dose, t_eff, tissue.alpha_beta_gy, tissue.t_rep_h))
    return {"t_eff_h": t_eff, "bed_voi_gy": bed_voi, "eqd2_voi_gy": float(eqd2_gy(bed_voi, tissue.alpha_beta_gy)),
            "mean_bed_gy": float(bed[np.isin(labels, voi.labels)].mean()), "alpha_beta_gy": tissue.alpha_beta_gy,
            "t_rep_h": tissue.t_rep_h}

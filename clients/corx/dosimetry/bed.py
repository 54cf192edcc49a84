"""Biologically effective dose (BED) and EQD2 from the absorbed dose and the fitted time-activity curve.

With the linear-quadratic model and mono-exponential repair (repair rate mu = ln 2 / T_rep), a protracted dose D
delivered with dose rate R(t) has BED = D + G D^2 / (alpha/beta), with the Lea-Catcheside factor

    G = (2 / D^2) int_0^inf R(t) int_0^t R(w) e^{-mu (t - w)} dw dt.

For R(t) = sum_i a_i e^{-l_i t} (a sum of exponentials, amplitudes of either sign) the integrals are analytic:

    D = sum_i a_i / l_i,        G = (2 / D^2) sum_i sum_j a_i a_j / ((l_i + l_j) (l_i + mu)),

which for one exponential (l = ln 2 / T_eff) is G = T_rep / (T_rep + T_eff) (Dale 1985), so
BED = D + D^2 (T_rep / (T_rep + T_eff)) / (alpha/beta); EQD2 = BED / (1 + 2 Gy / (alpha/beta)).

Per voxel the dose rate is taken proportional to the voxel's fitted activity curve:
- where the multi-model fit (>= 4 time points, :mod:`corx.dosimetry.kinetics_models`) selected a model with two
  exponentials (uptake then physical decay, uptake-washout, bi-exponential), G comes from that curve;
- elsewhere T_eff = ln 2 / lambda_eff of the voxel's mono-exponential fit (:mod:`corx.dosimetry.tia`); voxels
  without a fit (trapezoid rules, background) take the physical half-life of 177Lu, the longest T_eff possible
  and so the smallest BED correction (the share of such voxels is reported).
The fitted curve is used from t = 0 (the TIA's straight-line start before the first scan is not part of it).
Tissue parameters by VOI: a voxel of a VOI named ``kidney*`` gets the kidney values,
``tumour*``/``tumor*``/``lesion*`` the tumour values, any other voxel the "other" values. Defaults with their
sources: ``corx/data/radiobiology.json``. The VOI columns use the VOI curve's mono-exponential T_eff.
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
from ..io.labels import label_mask
from .kinetics_models import TWO_EXPONENTIAL_MODELS
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
    g = np.asarray(t_rep_h, dtype=np.float64) / (np.asarray(t_rep_h, dtype=np.float64) + np.asarray(t_eff_h))
    return bed_from_factor(dose_gy, g, alpha_beta_gy)


def lea_catcheside_factor(components: np.ndarray, t_rep_h: np.ndarray | float) -> np.ndarray:
    """G of a dose rate a1 e^{-l1 t} + a2 e^{-l2 t} (``components`` rows a1, l1, a2, l2 in 1/h; any shape after
    the first axis); NaN where the curve has no positive dose or a rate is not positive."""
    a1, l1, a2, l2 = (np.asarray(c, dtype=np.float64) for c in components)
    mu = math.log(2.0) / np.asarray(t_rep_h, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        dose = a1 / l1 + a2 / l2
        pairs = (a1 * a1 / (2 * l1 * (l1 + mu)) + a2 * a2 / (2 * l2 * (l2 + mu))
                 + a1 * a2 / (l1 + l2) * (1 / (l1 + mu) + 1 / (l2 + mu)))
        g = 2.0 * pairs / (dose * dose)
    ok = (l1 > 0) & (l2 > 0) & (dose > 0) & np.isfinite(g)
    return np.where(ok, g, np.nan)


def bed_from_factor(dose_gy: np.ndarray | float, g: np.ndarray | float,
                    alpha_beta_gy: np.ndarray | float) -> np.ndarray:
    """BED = D + G D^2 / (alpha/beta), Gy."""
    d = np.asarray(dose_gy, dtype=np.float64)
    return d + np.asarray(g, dtype=np.float64) * d * d / np.asarray(alpha_beta_gy, dtype=np.float64)


def eqd2_gy(bed: np.ndarray | float, alpha_beta_gy: np.ndarray | float) -> np.ndarray:
    """Equivalent dose in 2 Gy fractions from a BED."""
    return np.asarray(bed, dtype=np.float64) / (1.0 + 2.0 / np.asarray(alpha_beta_gy, dtype=np.float64))


@dataclass
class BedResult:
    """BED map (float32, Gy) on the dose grid; the shares of dosed voxels whose G came from a two-exponential
    multi-model curve, and that fell back to the physical half-life."""

    bed_gy: np.ndarray
    t_eff_fallback_fraction: float
    params: dict[str, TissueLQ]
    two_exponential_fraction: float = 0.0


def effective_half_life_h(lambda_eff_per_h: np.ndarray | float) -> np.ndarray:
    """ln 2 / lambda_eff (h); the physical half-life where there is no fit or the fit is not a decay."""
    lam = np.asarray(lambda_eff_per_h, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(np.isfinite(lam) & (lam > 0), math.log(2.0) / lam, LU177_HALF_LIFE_H)
    return np.minimum(t, LU177_HALF_LIFE_H)


def bed_map(dose_gy: np.ndarray, lambda_eff_per_h: np.ndarray, labels: np.ndarray | None = None,
            vois: Sequence[Voi] = (), params: dict[str, TissueLQ] | None = None,
            multimodel: tuple[np.ndarray, np.ndarray] | None = None) -> BedResult:
    """Voxel BED with tissue parameters from the VOIs (see the module docstring). ``multimodel``: (model codes,
    components (4, ...)) of the multi-model fit; its two-exponential curves give G where they were selected."""
    params = params or load_radiobiology()
    ab = np.full(dose_gy.shape, params["other"].alpha_beta_gy)
    t_rep = np.full(dose_gy.shape, params["other"].t_rep_h)
    if labels is not None:
        for voi in vois:
            tissue = params[tissue_of(voi.name)]
            inside = label_mask(labels, voi.labels)
            ab[inside], t_rep[inside] = tissue.alpha_beta_gy, tissue.t_rep_h
    t_eff = effective_half_life_h(lambda_eff_per_h)
    g = t_rep / (t_rep + t_eff)
    fitted = np.isfinite(lambda_eff_per_h) & (lambda_eff_per_h > 0)
    two = np.zeros(dose_gy.shape, bool)
    if multimodel is not None:  # G of the two-exponential curves, computed where they were selected (~0.2 %)
        codes, components = multimodel
        two = label_mask(codes, TWO_EXPONENTIAL_MODELS)
        g_two = lea_catcheside_factor(components[:, two], t_rep[two])
        valid = np.isfinite(g_two)
        two[two] = valid
        g[two] = g_two[valid]
    dosed = dose_gy > 0
    n_dosed = max(int(dosed.sum()), 1)
    fallback = float((dosed & ~fitted & ~two).sum() / n_dosed)
    bed = bed_from_factor(dose_gy, g, ab).astype(np.float32)
    return BedResult(bed_gy=bed, t_eff_fallback_fraction=fallback, params=params,
                     two_exponential_fraction=float((dosed & two).sum() / n_dosed))


def voi_bed_columns(row: dict[str, Any], voi: Voi, bed: np.ndarray, labels: np.ndarray,
                    params: dict[str, TissueLQ]) -> dict[str, float]:
    """Per-VOI columns: BED of the VOI mean dose with the VOI's effective half-life, its EQD2, and the voxel
    mean of the BED map."""
    tissue = params[tissue_of(voi.name)]
    dose = row.get("dose_voi_gy", row.get("mean_dose_gy", math.nan))
    t_eff = float(effective_half_life_h(row.get("voi_lambda_eff_per_h", math.nan)))
    bed_voi = float(bed_gy(dose, t_eff, tissue.alpha_beta_gy, tissue.t_rep_h))
    return {"t_eff_h": t_eff, "bed_voi_gy": bed_voi, "eqd2_voi_gy": float(eqd2_gy(bed_voi, tissue.alpha_beta_gy)),
            "mean_bed_gy": float(bed[label_mask(labels, voi.labels)].mean()), "alpha_beta_gy": tissue.alpha_beta_gy,
            "t_rep_h": tissue.t_rep_h}

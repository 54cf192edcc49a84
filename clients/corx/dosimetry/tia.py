"""Voxel-wise time-integrated activity (TIA) by the paper's eq. 6 (mono-exponential fit or trapezoid rule).

Per voxel (or per VOI mean curve) A(t_1..t_n):

* a mono-exponential A(t) = A0 exp(-lambda_eff t) is fitted to the n samples (least squares in activity units:
  closed-form weighted log-linear start with weights A^2, then a fixed number of safeguarded Gauss-Newton steps,
  all vectorised over voxels; never a Python loop per voxel);
* rule 1 (``TiaRule.MONOEXP``): lambda_eff > lambda_phys, the fit succeeded and its TIA is not excessive:
  TIA = integral of the fitted exponential from t = 0 to infinity = A0 / lambda_eff (eq. 6 as printed; the
  interval [0, t_1] is covered by the back-extrapolated exponential, i.e. instantaneous uptake, which is right for
  the fast-uptake organs of 177Lu-DOTATATE and is what the paper integrates; ``head="linear"`` instead uses a
  straight line from (0, 0) to the fitted A(t_1), as Sarrut et al. 2017 do);
* otherwise the trapezoid rule from (t = 0, A = 0) through the samples plus a physical-decay tail from the last
  sample, A_n / lambda_phys (eq. 6 second branch; the printed integral of A_3 exp(-lambda_phys t) from t_3 is read
  as A_3 exp(-lambda_phys (t - t_3)), the only reading that continues the curve at t_3), with the reason coded:
  rule 2 (``TiaRule.SLOW``) lambda_eff <= lambda_phys (rising or clearing no faster than decay),
  rule 3 (``TiaRule.FIT_FAILED``) fewer than 2 positive samples or a non-finite / non-positive fit,
  rule 4 (``TiaRule.EXCESSIVE``) the mono-exponential TIA exceeds ``max_tia_ratio`` (default 2) times the
  trapezoid-plus-tail TIA of the same voxel. For a genuinely mono-exponential curve sampled at 4/24/48/120 h or
  0.5/4/24/48 h the ratio stays below 1.25 while lambda_eff * t_1 <= 2; above 2 the TIA is dominated by the
  back-extrapolation into [0, t_1], where nothing was measured. That is the "excessive TIA" of the paper, made
  explicit;
* rule 0 (``TiaRule.BACKGROUND``): the voxel's peak activity is <= ``min_activity`` (default 0: only all-zero
  curves): no fit, TIA by the trapezoid rule (0 for an all-zero curve).

The RMSE map is the root mean square residual of the mono-exponential fit over the n samples (Bq/mL), the
paper's voxel-wise fit metric; it is 0 where no fit was made (rules 0 and 3).

One time point (n = 1, t_1 > 0): nothing can be fitted, so a mono-exponential with an assumed effective decay
constant is integrated from 0 to infinity through the one sample, TIA = A(t_1) exp(lambda t_1) / lambda:

* rule 5 (``TiaRule.HANSCHEID``): Hänscheid et al. 2018 (J Nucl Med 59:75), TIA = A(t_1) 2 t_1 / ln 2, which is the
  formula above with T_eff = t_1 (lambda = ln 2 / t_1). For a truly mono-exponential curve with effective
  half-life T the ratio to the true TIA is 2x / 2^x with x = t_1 / T: exact at t_1 = T and t_1 = 2T, at most
  +6.2 % between them (x = 1 / ln 2), -16 % at t_1 = 2T/3, -29 % at t_1 = T/2: measure late enough;
* rule 6 (``TiaRule.PRIOR_HALF_LIFE``): a prior effective half-life T_eff for the voxel (per VOI in the manifest,
  ``prior_effective_half_life_h``), lambda = ln 2 / T_eff: the "prior information" method.

``lambda_eff`` is then that assumed constant (so the BED uses the same T_eff); the RMSE is 0 (nothing fitted).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from ..errors import CorxError
from .physics import LU177_LAMBDA_PER_H


class TiaRule(IntEnum):
    """How a voxel's TIA was integrated (module docstring); the values are the uint8 codes of ``tia_rule``."""

    BACKGROUND = 0
    MONOEXP = 1
    SLOW = 2
    FIT_FAILED = 3
    EXCESSIVE = 4
    HANSCHEID = 5
    PRIOR_HALF_LIFE = 6


RULE_NAMES: dict[TiaRule, str] = {
    TiaRule.BACKGROUND: "background (peak <= min_activity): trapezoid + physical tail, no fit",
    TiaRule.MONOEXP: "mono-exponential fit integrated from t=0",
    TiaRule.SLOW: "trapezoid + physical tail: lambda_eff <= lambda_phys",
    TiaRule.FIT_FAILED: "trapezoid + physical tail: fit failed",
    TiaRule.EXCESSIVE: "trapezoid + physical tail: mono-exponential TIA excessive",
    TiaRule.HANSCHEID: "one time point: Hänscheid, TIA = A(t) 2t / ln 2 (T_eff = t)",
    TiaRule.PRIOR_HALF_LIFE: "one time point: prior effective half-life, TIA = A(t) exp(lambda t) / lambda",
}

RULE_SHORT: dict[TiaRule, str] = {
    TiaRule.BACKGROUND: "background", TiaRule.MONOEXP: "mono-exp", TiaRule.SLOW: "slow/rising",
    TiaRule.FIT_FAILED: "fit failed", TiaRule.EXCESSIVE: "excessive", TiaRule.HANSCHEID: "Hänscheid",
    TiaRule.PRIOR_HALF_LIFE: "prior T_eff",
}

DEFAULT_MAX_TIA_RATIO = 2.0
DEFAULT_GN_ITERATIONS = 3
NEGATIVE_TOLERANCE = 1e-4  # relative to the time point's maximum
_CHUNK = 1 << 15


@dataclass
class CurveTia:
    """Eq.-6 results for a batch of curves, flat arrays of length N (activity in Bq/mL, time in h)."""

    tia: np.ndarray          # Bq*h/mL, by the rule in ``rule``
    rule: np.ndarray         # uint8 TiaRule codes
    rmse: np.ndarray         # Bq/mL, mono-exponential fit residual (0 where not fitted)
    lambda_eff: np.ndarray   # 1/h, NaN where not fitted
    a0: np.ndarray           # Bq/mL, fitted intercept at t=0, NaN where not fitted
    tia_monoexp: np.ndarray  # Bq*h/mL, mono-exponential integral (NaN where not applicable)
    tia_trapezoid: np.ndarray  # Bq*h/mL, trapezoid from 0 plus physical tail
    tia_sd: np.ndarray | None = None  # Bq*h/mL, standard deviation of ``tia`` from the fit (NaN where none)


@dataclass
class TiaResult:
    """Voxel-wise TIA maps on the activity grid (X, Y, Z)."""

    tia_mbqh_per_ml: np.ndarray   # float32, MBq*h/mL
    rmse_bq_per_ml: np.ndarray    # float32, Bq/mL
    rule: np.ndarray              # uint8, TiaRule codes
    lambda_eff_per_h: np.ndarray  # float32, NaN where not fitted
    voxel_volume_ml: float
    hours: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    #: float32, MBq*h/mL: standard deviation of the TIA from the fit (rule 1 with >= 3 samples), NaN elsewhere
    tia_sd_mbqh_per_ml: np.ndarray | None = None

    @property
    def tia_mbqh(self) -> np.ndarray:
        """TIA per voxel in MBq*h."""
        return self.tia_mbqh_per_ml * np.float32(self.voxel_volume_ml)

    def rule_counts(self) -> dict[str, int]:
        """Number of voxels per rule code (keys are the codes as strings)."""
        return {str(code): n for code, n in code_counts(self.rule).items()}


def code_counts(codes: np.ndarray) -> dict[int, int]:
    """{code: number of voxels} of a map of small non-negative integer codes (uint8), ascending, codes that occur
    only: what ``np.unique(codes, return_counts=True)`` gives, by counting instead of sorting (2M voxels: 5 ms,
    not 80)."""
    counts = np.bincount(np.asarray(codes).ravel())
    return {int(c): int(counts[c]) for c in np.flatnonzero(counts)}


# ----------------------------------------------------------------------------------------------- validation
def validate_hours(hours: Sequence[float] | np.ndarray, min_points: int = 2) -> np.ndarray:
    """Return the acquisition times as float64, checking: >= ``min_points``, finite, >= 0 (> 0 for a single time
    point: the single-time-point methods extrapolate from it), strictly increasing."""
    h = np.asarray(hours, dtype=np.float64)
    if h.ndim != 1:
        raise CorxError(f"hours must be a 1-D sequence, got shape {h.shape}")
    need = max(1, min_points)
    if h.size < need:
        raise CorxError(f"at least {need} time point{'s' if need > 1 else ''} {'are' if need > 1 else 'is'} "
                        f"needed, got {h.size}")
    if not np.all(np.isfinite(h)) or np.any(h < 0):
        raise CorxError(f"hours must be finite and >= 0, got {h.tolist()}")
    if h.size == 1 and h[0] <= 0:
        raise CorxError(f"a single time point must be after the injection (hours > 0), got {h[0]:g}")
    if np.any(np.diff(h) <= 0):
        raise CorxError(f"hours must be strictly increasing, got {h.tolist()}")
    return h


def validate_activity(activity: np.ndarray, hours: np.ndarray, names: Sequence[str] | None = None,
                      negative_tolerance: float = NEGATIVE_TOLERANCE) -> None:
    """Check a (T, ...) activity stack: one frame per time point, finite, not negative beyond tolerance.

    ``names`` (one per time point, e.g. the SPECT file) goes into the error messages. Values in
    [-tolerance * frame max, 0) are accepted (rounding from resampling) and treated as 0 by the fit.
    """
    if activity.ndim < 2:
        raise CorxError(f"activity must be (T, ...) with one frame per time point, got shape {activity.shape}")
    if activity.shape[0] != len(hours):
        raise CorxError(f"activity has {activity.shape[0]} frames but {len(hours)} time points were given")
    for i in range(activity.shape[0]):
        frame = activity[i]
        where = names[i] if names is not None else f"time point {i} ({hours[i]:g} h)"
        finite = np.isfinite(frame)
        if not finite.all():
            raise CorxError(f"{where}: {int(frame.size - finite.sum())} non-finite activity values (NaN/inf)")
        lo, hi = float(frame.min()), float(frame.max())
        if lo < -negative_tolerance * max(hi, 1e-6):
            n_neg = int((frame < -negative_tolerance * max(hi, 1e-6)).sum())
            raise CorxError(f"{where}: {n_neg} negative activity values (minimum {lo:.4g} Bq/mL); activity "
                            f"concentration must be >= 0")


# ------------------------------------------------------------------------------------------------- curves
def trapezoid_tail(curves: np.ndarray, hours: np.ndarray, lambda_phys: float = LU177_LAMBDA_PER_H) -> np.ndarray:
    """Trapezoid rule from (0, 0) through the samples plus A_n / lambda_phys; curves (T, N) -> (N,)."""
    t = np.concatenate([[0.0], hours])
    dt = np.diff(t).astype(np.float32)
    out = curves[0] * np.float32(0.5 * dt[0])
    for i in range(1, curves.shape[0]):
        out = out + (curves[i - 1] + curves[i]) * np.float32(0.5 * dt[i])
    return out + curves[-1] * np.float32(1.0 / lambda_phys)


def fit_monoexp(curves: np.ndarray, hours: np.ndarray, n_iter: int = DEFAULT_GN_ITERATIONS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares fit of A0 exp(-lam t) to each column of ``curves`` (T, N), activity >= 0.

    Returns (a0, lam, sse, ok): a0 in the curves' unit, lam in 1/h, sse the residual sum of squares, ok where
    at least 2 samples are positive and the result is finite. Each column is scaled by its maximum and time by
    t_n, a weighted log-linear fit (weights A^2, so that it approximates least squares in activity units) gives
    the start, and ``n_iter`` Gauss-Newton steps, each kept only where it lowers the SSE, refine it.
    """
    y = np.asarray(curves, dtype=np.float32)
    scale = y.max(axis=0)
    pos = y > 0
    npos = pos.sum(axis=0)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    y = y / safe
    tmax = float(hours[-1])
    tau = (np.asarray(hours, dtype=np.float64) / tmax).astype(np.float32)[:, None]

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        w = np.where(pos, y * y, np.float32(0.0))
        z = np.where(pos, np.log(np.where(pos, y, np.float32(1.0))), np.float32(0.0))
        s0 = w.sum(axis=0)
        tbar = (w * tau).sum(axis=0) / s0
        zbar = (w * z).sum(axis=0) / s0
        dtau = tau - tbar  # centred sums: exact even when one sample dominates the weights
        stt = (w * dtau * dtau).sum(axis=0)
        slope = (w * dtau * z).sum(axis=0) / stt
        lam = -slope
        a = np.exp(zbar - slope * tbar)
        ok = (npos >= 2) & (stt > 0) & np.isfinite(lam) & np.isfinite(a)
        lam = np.where(ok, lam, np.float32(0.0)).astype(np.float32)
        a = np.where(ok, a, np.float32(0.0)).astype(np.float32)

        e = np.exp(-lam * tau)
        sse = ((y - a * e) ** 2).sum(axis=0)
        for _ in range(n_iter):
            r = y - a * e
            te = tau * e
            h11 = (e * e).sum(axis=0)
            h12 = -a * (te * e).sum(axis=0)
            h22 = a * a * (te * te).sum(axis=0)
            g1 = (e * r).sum(axis=0)
            g2 = -a * (te * r).sum(axis=0)
            d = h11 * h22 - h12 * h12
            da = (h22 * g1 - h12 * g2) / d
            dl = (h11 * g2 - h12 * g1) / d
            a_new = a + da
            lam_new = lam + dl
            e_new = np.exp(-lam_new * tau)
            sse_new = ((y - a_new * e_new) ** 2).sum(axis=0)
            acc = ok & np.isfinite(sse_new) & (sse_new < sse) & (a_new > 0)
            a = np.where(acc, a_new, a)
            lam = np.where(acc, lam_new, lam)
            sse = np.where(acc, sse_new, sse)
            e = np.where(acc, e_new, e)
    ok = ok & np.isfinite(sse) & (a > 0)
    safe64 = safe.astype(np.float64)
    return a * safe, lam / np.float32(tmax), sse * safe64 * safe64, ok


def monoexp_tia_sd(a0: np.ndarray, lam: np.ndarray, sse: np.ndarray, hours: np.ndarray,
                   head: str = "exponential") -> np.ndarray:
    """Standard deviation of the mono-exponential TIA from the fit's covariance (float64, NaN with < 3 samples).

    Gauss-Newton / least-squares covariance of (A0, lambda): C = s^2 (J^T J)^-1 with J the Jacobian of the model
    at the solution and s^2 = SSE / (n - 2) the residual variance; Var(TIA) = g^T C g with g the gradient of the
    TIA (A0 / lambda, or the linear-head form) with respect to (A0, lambda). It is the fit (statistical) part of
    the uncertainty only: calibration and volume are combined per VOI (corx.dosimetry.uncertainty).
    """
    t = np.asarray(hours, dtype=np.float64)[:, None]
    a = np.asarray(a0, dtype=np.float64)
    k = np.asarray(lam, dtype=np.float64)
    n = t.shape[0]
    if n < 3:
        return np.full(a.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        e2 = np.exp(-2.0 * k * t)
        h11 = e2.sum(axis=0)
        h12 = -a * (t * e2).sum(axis=0)
        h22 = a * a * (t * t * e2).sum(axis=0)
        det = h11 * h22 - h12 * h12
        s2 = np.asarray(sse, dtype=np.float64) / (n - 2)
        if head == "exponential":
            g1, g2 = 1.0 / k, -a / (k * k)
        else:  # a1 (t1 / 2 + 1 / lambda) with a1 = A0 exp(-lambda t1)
            t1 = float(t[0, 0])
            e1 = np.exp(-k * t1)
            tail = 0.5 * t1 + 1.0 / k
            g1 = e1 * tail
            g2 = -t1 * a * e1 * tail - a * e1 / (k * k)
        var = s2 / det * (g1 * g1 * h22 - 2.0 * g1 * g2 * h12 + g2 * g2 * h11)
    return np.where(np.isfinite(var) & (det > 0), np.sqrt(np.maximum(var, 0.0)), np.nan)


def single_time_point_tia(curves: np.ndarray, hours: np.ndarray, prior_half_life_h: np.ndarray | None = None, *,
                          lambda_phys: float = LU177_LAMBDA_PER_H, min_activity: float = 0.0) -> CurveTia:
    """TIA of one-sample curves (1, N): Hänscheid where ``prior_half_life_h`` (N,) is NaN or absent, else the
    prior-half-life mono-exponential (module docstring, rules 5 and 6); background as in eq. 6."""
    c = np.maximum(np.asarray(curves, dtype=np.float32), np.float32(0.0))
    t = float(hours[0])
    n = c.shape[1]
    prior = np.full(n, np.nan, np.float64) if prior_half_life_h is None else np.asarray(prior_half_life_h, float)
    if prior.shape != (n,):
        raise CorxError(f"prior half-lives must have one value per curve ({n}), got shape {prior.shape}")
    has_prior = np.isfinite(prior)
    if np.any(prior[has_prior] <= 0):
        raise CorxError(f"prior effective half-lives must be > 0 h, got minimum {prior[has_prior].min():g}")
    lam = np.where(has_prior, math.log(2.0) / np.where(has_prior, prior, 1.0), math.log(2.0) / t)
    a1 = c[0].astype(np.float64)
    a0 = a1 * np.exp(lam * t)
    mono = (a0 / lam).astype(np.float32)
    trap = trapezoid_tail(c, hours, lambda_phys)
    background = a1 <= min_activity
    rule = np.where(has_prior, TiaRule.PRIOR_HALF_LIFE, TiaRule.HANSCHEID).astype(np.uint8)
    rule[background] = TiaRule.BACKGROUND
    nan = np.float32(np.nan)
    return CurveTia(tia=np.where(background, trap, mono).astype(np.float32), rule=rule,
                    rmse=np.zeros(n, np.float32), lambda_eff=np.where(background, nan, lam).astype(np.float32),
                    a0=np.where(background, nan, a0).astype(np.float32),
                    tia_monoexp=np.where(background, nan, mono).astype(np.float32), tia_trapezoid=trap)


def tia_from_curves(curves: np.ndarray, hours: Sequence[float] | np.ndarray, *,
                    lambda_phys: float = LU177_LAMBDA_PER_H, max_tia_ratio: float = DEFAULT_MAX_TIA_RATIO,
                    min_activity: float = 0.0, head: str = "exponential",
                    n_iter: int = DEFAULT_GN_ITERATIONS, prior_half_life_h: np.ndarray | None = None) -> CurveTia:
    """Eq.-6 TIA of each column of ``curves`` (T, N) in Bq/mL; see the module docstring for the rules.

    With one time point (T = 1) the single-time-point rules apply (:func:`single_time_point_tia`);
    ``prior_half_life_h`` (N,), NaN where unknown, is only accepted then.
    """
    h = validate_hours(hours, min_points=1)
    if head not in ("exponential", "linear"):
        raise CorxError(f"head must be 'exponential' or 'linear', got {head!r}")
    c = np.maximum(np.asarray(curves, dtype=np.float32), np.float32(0.0))
    if c.ndim != 2 or c.shape[0] != h.size:
        raise CorxError(f"curves must be (T={h.size}, N), got shape {c.shape}")
    if h.size == 1:
        return single_time_point_tia(c, h, prior_half_life_h, lambda_phys=lambda_phys, min_activity=min_activity)
    if prior_half_life_h is not None:
        raise CorxError(f"prior effective half-lives are used with a single time point only ({h.size} given): "
                        "with several time points the effective decay is fitted")
    trap = trapezoid_tail(c, h, lambda_phys)
    peak = c.max(axis=0)
    fitted = peak > min_activity
    if fitted.all():
        a0, lam, sse, ok = fit_monoexp(c, h, n_iter=n_iter)
    else:  # fit only the voxels above min_activity (background is most of a SPECT field of view)
        n = c.shape[1]
        a0, lam = np.zeros(n, np.float32), np.zeros(n, np.float32)
        sse, ok = np.zeros(n, np.float64), np.zeros(n, bool)
        idx = np.flatnonzero(fitted)
        if idx.size:
            a0[idx], lam[idx], sse[idx], ok[idx] = fit_monoexp(c[:, idx], h, n_iter=n_iter)
    with np.errstate(invalid="ignore", over="ignore"):
        fit_rmse = np.sqrt(np.maximum(sse, 0) / np.float32(h.size)).astype(np.float32)
    # a fit whose residual exceeds the curve's own peak has diverged (e.g. a steeply rising curve): call it failed
    ok = ok & np.isfinite(fit_rmse) & (fit_rmse <= peak)
    lam_f = np.float32(lambda_phys)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if head == "exponential":
            mono = a0 / lam
        else:
            a1 = a0 * np.exp(-lam * np.float32(h[0]))
            mono = a1 * np.float32(0.5 * h[0]) + a1 / lam
    slow = ok & (lam <= lam_f)
    fast = ok & ~slow
    excessive = fast & ~(np.isfinite(mono) & (mono <= np.float32(max_tia_ratio) * trap))
    rule = np.full(c.shape[1], TiaRule.FIT_FAILED, dtype=np.uint8)
    rule[~fitted] = TiaRule.BACKGROUND
    rule[slow] = TiaRule.SLOW
    rule[excessive] = TiaRule.EXCESSIVE
    use_mono = fast & ~excessive
    rule[use_mono] = TiaRule.MONOEXP
    tia = np.where(use_mono, mono, trap).astype(np.float32)
    rmse = np.where(ok, fit_rmse, np.float32(0.0)).astype(np.float32)
    nan = np.float32(np.nan)
    sd = np.full(tia.shape, nan, np.float32)
    if use_mono.any():
        sd[use_mono] = monoexp_tia_sd(a0[use_mono], lam[use_mono], sse[use_mono], h, head)
    return CurveTia(tia=tia, rule=rule, rmse=rmse, lambda_eff=np.where(ok, lam, nan).astype(np.float32),
                    a0=np.where(ok, a0, nan).astype(np.float32),
                    tia_monoexp=np.where(fast, mono, nan).astype(np.float32), tia_trapezoid=trap, tia_sd=sd)


# ------------------------------------------------------------------------------------------------- volumes
def default_threads() -> int:
    """Worker threads for voxel chunks: the CPUs this process may use (numpy releases the GIL)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def map_chunks(fn: Callable[[slice], None], n: int, chunk: int = _CHUNK, threads: int | None = None) -> None:
    """Call ``fn(slice)`` over [0, n) in chunks, on ``threads`` worker threads (cache-sized chunks)."""
    slices = [slice(i, min(i + chunk, n)) for i in range(0, n, chunk)]
    threads = default_threads() if threads is None else max(1, int(threads))
    if threads == 1 or len(slices) == 1:
        for s in slices:
            fn(s)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(fn, slices):
            pass


def compute_tia(activity: np.ndarray, hours: Sequence[float] | np.ndarray, voxel_volume_ml: float, *,
                lambda_phys: float = LU177_LAMBDA_PER_H, max_tia_ratio: float = DEFAULT_MAX_TIA_RATIO,
                min_activity: float = 0.0, head: str = "exponential", n_iter: int = DEFAULT_GN_ITERATIONS,
                names: Sequence[str] | None = None, threads: int | None = None,
                prior_half_life_h: np.ndarray | None = None) -> TiaResult:
    """Voxel-wise eq.-6 TIA of registered activity maps (one time point: Hänscheid or a prior half-life).

    Args:
        activity: (T, X, Y, Z) activity concentration in Bq/mL, one frame per time point, on one grid.
        hours: acquisition times post-injection (h), strictly increasing.
        voxel_volume_ml: volume of one voxel (mL), for the per-voxel MBq*h map.
        lambda_phys: physical decay constant (1/h), 177Lu by default.
        max_tia_ratio: "excessive TIA" threshold, mono-exponential TIA / trapezoid-plus-tail TIA.
        min_activity: voxels whose peak is <= this (Bq/mL) are not fitted (rule 0, trapezoid).
        head: how [0, t_1] is integrated under the fit: "exponential" (eq. 6) or "linear" (ramp from 0).
        n_iter: Gauss-Newton refinement steps after the log-linear start.
        names: one label per time point (e.g. the file) for error messages.
        threads: worker threads (default: the CPUs available).
        prior_half_life_h: (X, Y, Z) prior effective half-life (h) per voxel, NaN where unknown (Hänscheid
            there); single time point only.
    """
    h = validate_hours(hours, min_points=1)
    act = np.asarray(activity)
    if act.ndim != 4:
        raise CorxError(f"activity must be (T, X, Y, Z), got shape {act.shape}")
    prior = None
    if prior_half_life_h is not None:
        prior = np.asarray(prior_half_life_h, dtype=np.float64)
        if prior.shape != act.shape[1:]:
            raise CorxError(f"prior half-life map {prior.shape} does not match the activity grid {act.shape[1:]}")
        prior = prior.ravel()
    validate_activity(act, h, names)
    if not (math.isfinite(voxel_volume_ml) and voxel_volume_ml > 0):
        raise CorxError(f"voxel_volume_ml must be a positive number, got {voxel_volume_ml}")
    spatial = act.shape[1:]
    flat = act.reshape(act.shape[0], -1)
    n = flat.shape[1]
    tia = np.empty(n, np.float32)
    rmse = np.empty(n, np.float32)
    rule = np.empty(n, np.uint8)
    lam = np.empty(n, np.float32)
    sd = np.empty(n, np.float32)

    def work(s: slice) -> None:
        res = tia_from_curves(flat[:, s], h, lambda_phys=lambda_phys, max_tia_ratio=max_tia_ratio,
                              min_activity=min_activity, head=head, n_iter=n_iter,
                              prior_half_life_h=None if prior is None else prior[s])
        tia[s] = res.tia * np.float32(1e-6)
        rmse[s] = res.rmse
        rule[s] = res.rule
        lam[s] = res.lambda_eff
        sd[s] = (res.tia_sd if res.tia_sd is not None else np.float32(np.nan)) * np.float32(1e-6)

    map_chunks(work, n, threads=threads)
    params = {"lambda_phys_per_h": lambda_phys, "max_tia_ratio": max_tia_ratio, "min_activity_bq_per_ml":
              min_activity, "head": head, "gauss_newton_iterations": n_iter, "rules": RULE_NAMES}
    if h.size == 1:
        given = prior is not None and bool(np.isfinite(prior).any())
        params["single_time_point"] = "prior half-life where given, else Hänscheid" if given else "Hänscheid"
    return TiaResult(tia_mbqh_per_ml=tia.reshape(spatial), rmse_bq_per_ml=rmse.reshape(spatial),
                     rule=rule.reshape(spatial), lambda_eff_per_h=lam.reshape(spatial),
                     voxel_volume_ml=float(voxel_volume_ml), hours=h, params=params,
                     tia_sd_mbqh_per_ml=sd.reshape(spatial))

"""Voxel-wise multi-model TIA: several sum-of-exponential models fitted in batch, selected by AICc.

Follows Sarrut et al., Med Phys 44 (2017) 6280: each candidate model is fitted to every voxel's curve; a model
is a candidate for a voxel only if its fit has R^2 > 0.9 and a positive area; the candidate with the lowest AICc
wins; the interval [0, t_1] is integrated as a straight line from (0, 0) to the fitted A(t_1) and [t_1, inf)
analytically. Voxels with no candidate fall back to the trapezoid rule plus a physical tail (as eq. 6).

Models (all clearance rates are constrained to be >= lambda_phys: tissue cannot hold activity longer than
it decays; K = number of fitted parameters):

====  ===========================  ===========================================================  ===
code  name                         A(t)                                                         K
====  ===========================  ===========================================================  ===
1     ``monoexp``                  A e^{-l t},  l > l_phys                                      2
2     ``uptake_physical``          A (e^{-l_phys t} - e^{-(l_phys + k_u) t})  (no biological    2
                                   washout: uptake, then trapped)
3     ``uptake_washout``           A (e^{-l_w t} - e^{-l_u t}),  l_phys <= l_w < l_u            3
4     ``biexp``                    A1 e^{-l_1 t} + A2 e^{-l_2 t},  l_phys <= l_2 < l_1          4
====  ===========================  ===========================================================  ===

AICc = n ln(SSE / n) + 2K + 2K(K + 1) / (n - K - 1) with n time points. It is only defined for n >= K + 2, so
a model is fitted and eligible only where that holds: with 4 time points the candidates are the two 2-parameter
models, uptake-washout needs 5 and the bi-exponential 6. SSE is floored at n * (1e-5 * peak)^2 (float
precision) so that noiseless curves are ranked by the penalty terms, not by rounding.

Fitting: parameters in scaled units (activity / voxel peak, time / t_n); rates as logarithms of the excess
over the previous rate; a multi-start grid of rate pairs with the amplitudes solved linearly (variable
projection) picks the start; then a fixed number of Levenberg-Marquardt iterations with a per-voxel damping
factor, all arrays (T, N) vectorised over voxels.

Codes in the model map: 0 below the threshold (trapezoid, not fitted), 1-4 the selected model, 5 no candidate
(trapezoid + physical tail).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from ..errors import CorxError
from .physics import LU177_LAMBDA_PER_H
from .tia import code_counts, fit_monoexp, map_chunks, trapezoid_tail, validate_activity, validate_hours


class KineticModel(IntEnum):
    """Codes of the multi-model map ``tia_model`` (uint8 values): the selected model, or why there is none."""

    BELOW_THRESHOLD = 0
    MONOEXP = 1
    UPTAKE_PHYSICAL = 2
    UPTAKE_WASHOUT = 3
    BIEXP = 4
    NONE = 5


#: models whose curve has two exponential terms (BED uses the whole curve there, :mod:`corx.dosimetry.bed`)
TWO_EXPONENTIAL_MODELS = (KineticModel.UPTAKE_PHYSICAL, KineticModel.UPTAKE_WASHOUT, KineticModel.BIEXP)
MODEL_NAMES: dict[KineticModel, str] = {
    KineticModel.BELOW_THRESHOLD: "below threshold: trapezoid + physical tail, not fitted",
    KineticModel.MONOEXP: "monoexp",
    KineticModel.UPTAKE_PHYSICAL: "uptake_physical",
    KineticModel.UPTAKE_WASHOUT: "uptake_washout",
    KineticModel.BIEXP: "biexp",
    KineticModel.NONE: "no candidate: trapezoid + physical tail",
}
R2_MIN = 0.9
SSE_FLOOR = 1e-5
DEFAULT_LM_ITERATIONS = 30
_LOG_MIN, _LOG_MAX = -12.0, 9.0  # bounds of log-rates in scaled time (rate * t_n)


def aicc(sse: np.ndarray, n: int, k: int) -> np.ndarray:
    """Corrected Akaike information criterion of a least-squares fit (needs n >= k + 2)."""
    if n < k + 2:
        raise CorxError(f"AICc needs at least {k + 2} points for {k} parameters, got {n}")
    return n * np.log(sse / n) + 2 * k + 2.0 * k * (k + 1) / (n - k - 1)


# --------------------------------------------------------------------------------------------- the models
class _Model:
    """A model in scaled units: y = f(tau; p), p of shape (K, N); lp = lambda_phys * t_n."""

    code: KineticModel
    name: str
    k: int

    def starts(self, lp: float) -> list[tuple[float, ...]]:
        """Candidate log-rate starts (the linear amplitudes are solved for each)."""
        raise NotImplementedError

    def basis(self, logs: Sequence[np.ndarray], tau: np.ndarray, lp: float) -> list[np.ndarray]:
        """Basis functions multiplying the amplitudes, for given log-rates."""
        raise NotImplementedError

    def evaluate(self, p: np.ndarray, tau: np.ndarray, lp: float) -> tuple[np.ndarray, list[np.ndarray]]:
        """Model values (T, N) and Jacobian columns, one (T, N) array per parameter."""
        raise NotImplementedError

    def area(self, p: np.ndarray, t1: float, lp: float) -> np.ndarray:
        """Integral (scaled units): linear from (0, 0) to f(t1), analytic from t1 to infinity."""
        raise NotImplementedError

    def components(self, p: np.ndarray, lp: float) -> tuple[np.ndarray, ...]:
        """The fitted curve as a1 e^{-r1 tau} + a2 e^{-r2 tau}: (a1, r1, a2, r2), scaled units."""
        raise NotImplementedError

    @property
    def n_amp(self) -> int:
        return 2 if self.code == KineticModel.BIEXP else 1


class _UptakePhysical(_Model):
    code, name, k = KineticModel.UPTAKE_PHYSICAL, "uptake_physical", 2

    def starts(self, lp: float) -> list[tuple[float, ...]]:
        return [(math.log(v),) for v in np.geomspace(0.3, 300.0, 9)]

    def basis(self, logs: Sequence[np.ndarray], tau: np.ndarray, lp: float) -> list[np.ndarray]:
        ep = np.exp(-lp * tau)
        return [ep * (1 - np.exp(-np.exp(logs[0]) * tau))]

    def evaluate(self, p: np.ndarray, tau: np.ndarray, lp: float) -> tuple[np.ndarray, list[np.ndarray]]:
        a, d = p
        ku = np.exp(d)
        ep = np.exp(-lp * tau)
        eu = np.exp(-(lp + ku) * tau)
        b = ep - eu
        return a * b, [b, a * ku * tau * eu]

    def area(self, p: np.ndarray, t1: float, lp: float) -> np.ndarray:
        a, d = p
        lu = lp + np.exp(d)
        f1 = a * (math.exp(-lp * t1) - np.exp(-lu * t1))
        return 0.5 * t1 * f1 + a * (math.exp(-lp * t1) / lp - np.exp(-lu * t1) / lu)

    def components(self, p: np.ndarray, lp: float) -> tuple[np.ndarray, ...]:
        a, d = p
        return a, np.full_like(a, lp), -a, lp + np.exp(d)


class _UptakeWashout(_Model):
    code, name, k = KineticModel.UPTAKE_WASHOUT, "uptake_washout", 3

    def starts(self, lp: float) -> list[tuple[float, ...]]:
        ws = [math.log(v) for v in (0.01, 0.3, 1.0, 3.0, 10.0)]
        us = [math.log(v) for v in np.geomspace(1.0, 300.0, 6)]
        return list(itertools.product(ws, us))

    def _rates(self, logs: Sequence[np.ndarray], lp: float) -> tuple[np.ndarray, np.ndarray]:
        lw = lp + np.exp(logs[0])
        return lw, lw + np.exp(logs[1])

    def basis(self, logs: Sequence[np.ndarray], tau: np.ndarray, lp: float) -> list[np.ndarray]:
        lw, lu = self._rates(logs, lp)
        return [np.exp(-lw * tau) - np.exp(-lu * tau)]

    def evaluate(self, p: np.ndarray, tau: np.ndarray, lp: float) -> tuple[np.ndarray, list[np.ndarray]]:
        a, tw, du = p
        lw, lu = self._rates((tw, du), lp)
        ew = np.exp(-lw * tau)
        eu = np.exp(-lu * tau)
        b = ew - eu
        return a * b, [b, a * np.exp(tw) * tau * (eu - ew), a * np.exp(du) * tau * eu]

    def area(self, p: np.ndarray, t1: float, lp: float) -> np.ndarray:
        a, tw, du = p
        lw, lu = self._rates((tw, du), lp)
        ew, eu = np.exp(-lw * t1), np.exp(-lu * t1)
        return 0.5 * t1 * a * (ew - eu) + a * (ew / lw - eu / lu)

    def components(self, p: np.ndarray, lp: float) -> tuple[np.ndarray, ...]:
        a, tw, du = p
        lw, lu = self._rates((tw, du), lp)
        return a, lw, -a, lu


class _BiExp(_Model):
    code, name, k = KineticModel.BIEXP, "biexp", 4

    def starts(self, lp: float) -> list[tuple[float, ...]]:
        slows = [math.log(v) for v in (0.01, 0.3, 1.0, 3.0)]
        fasts = [math.log(v) for v in np.geomspace(1.0, 300.0, 6)]
        return list(itertools.product(slows, fasts))

    def _rates(self, logs: Sequence[np.ndarray], lp: float) -> tuple[np.ndarray, np.ndarray]:
        l2 = lp + np.exp(logs[0])
        return l2 + np.exp(logs[1]), l2

    def basis(self, logs: Sequence[np.ndarray], tau: np.ndarray, lp: float) -> list[np.ndarray]:
        l1, l2 = self._rates(logs, lp)
        return [np.exp(-l1 * tau), np.exp(-l2 * tau)]

    def evaluate(self, p: np.ndarray, tau: np.ndarray, lp: float) -> tuple[np.ndarray, list[np.ndarray]]:
        a1, a2, t2, d1 = p
        l1, l2 = self._rates((t2, d1), lp)
        e1 = np.exp(-l1 * tau)
        e2 = np.exp(-l2 * tau)
        f1 = a1 * e1
        f = f1 + a2 * e2
        return f, [e1, e2, -np.exp(t2) * tau * f, -np.exp(d1) * tau * f1]

    def area(self, p: np.ndarray, t1: float, lp: float) -> np.ndarray:
        a1, a2, t2, d1 = p
        l1, l2 = self._rates((t2, d1), lp)
        e1, e2 = np.exp(-l1 * t1), np.exp(-l2 * t1)
        return 0.5 * t1 * (a1 * e1 + a2 * e2) + a1 * e1 / l1 + a2 * e2 / l2

    def components(self, p: np.ndarray, lp: float) -> tuple[np.ndarray, ...]:
        a1, a2, t2, d1 = p
        l1, l2 = self._rates((t2, d1), lp)
        return a1, l1, a2, l2


_LM_MODELS: dict[KineticModel, _Model] = {m.code: m for m in (_UptakePhysical(), _UptakeWashout(), _BiExp())}
MODEL_PARAMS: dict[KineticModel, int] = {KineticModel.MONOEXP: 2, **{c: m.k for c, m in _LM_MODELS.items()}}


def eligible_models(n_timepoints: int) -> list[KineticModel]:
    """Model codes whose AICc is defined for this many time points (n >= K + 2)."""
    return [code for code, k in sorted(MODEL_PARAMS.items()) if n_timepoints >= k + 2]


# ------------------------------------------------------------------------------------------ batched solver
def _solve_small(h: list[list[np.ndarray]], g: list[np.ndarray]) -> list[np.ndarray]:
    """Solve K x K systems batched over N (Gaussian elimination, no pivoting: h is SPD after damping)."""
    k = len(g)
    a = [[h[i][j].copy() for j in range(k)] for i in range(k)]
    b = [gi.copy() for gi in g]
    for c in range(k):
        piv = a[c][c]
        for r in range(c + 1, k):
            m = a[r][c] / piv
            for j in range(c, k):
                a[r][j] = a[r][j] - m * a[c][j]
            b[r] = b[r] - m * b[c]
    x: list[np.ndarray] = [np.empty(0)] * k
    for r in range(k - 1, -1, -1):
        acc = b[r]
        for j in range(r + 1, k):
            acc = acc - a[r][j] * x[j]
        x[r] = acc / a[r][r]
    return x


def _linear_amplitudes(basis: list[np.ndarray], y: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Least-squares amplitudes for fixed basis functions (1 or 2), and the SSE."""
    if len(basis) == 1:
        b = basis[0]
        amp = [(b * y).sum(axis=0) / np.maximum((b * b).sum(axis=0), 1e-30)]
        fit = amp[0] * b
    else:
        b1, b2 = basis
        h11, h12, h22 = (b1 * b1).sum(0), (b1 * b2).sum(0), (b2 * b2).sum(0)
        g1, g2 = (b1 * y).sum(0), (b2 * y).sum(0)
        det = h11 * h22 - h12 * h12
        det = np.where(np.abs(det) > 1e-30, det, 1e-30)
        amp = [(h22 * g1 - h12 * g2) / det, (h11 * g2 - h12 * g1) / det]
        fit = amp[0] * b1 + amp[1] * b2
    return amp, ((y - fit) ** 2).sum(axis=0)


def fit_model(model: _Model, y: np.ndarray, tau: np.ndarray, lp: float, n_iter: int = DEFAULT_LM_ITERATIONS
              ) -> tuple[np.ndarray, np.ndarray]:
    """Fit one model to scaled curves y (T, N); returns parameters (K, N) and SSE (N,)."""
    n = y.shape[1]
    best_sse = np.full(n, np.inf, dtype=y.dtype)
    p = np.zeros((model.k, n), dtype=y.dtype)
    n_log = model.k - model.n_amp
    for start in model.starts(lp):
        logs = [np.full(n, s, dtype=y.dtype) for s in start]
        amp, sse = _linear_amplitudes(model.basis(logs, tau, lp), y)
        better = sse < best_sse
        best_sse = np.where(better, sse, best_sse)
        p = np.where(better, np.stack([*amp, *logs]), p)

    f, jac = model.evaluate(p, tau, lp)
    sse = ((y - f) ** 2).sum(axis=0)
    mu = np.full(n, 1e-3, dtype=y.dtype)
    lo = np.array([-np.inf] * model.n_amp + [_LOG_MIN] * n_log, dtype=y.dtype)[:, None]
    hi = np.array([np.inf] * model.n_amp + [_LOG_MAX] * n_log, dtype=y.dtype)[:, None]
    with np.errstate(all="ignore"):
        for _ in range(n_iter):
            r = y - f
            h = [[None] * model.k for _ in range(model.k)]
            for i in range(model.k):
                for j in range(i, model.k):
                    h[i][j] = h[j][i] = (jac[i] * jac[j]).sum(axis=0)
            g = [(jac[i] * r).sum(axis=0) for i in range(model.k)]
            for i in range(model.k):
                h[i][i] = h[i][i] * (1 + mu) + 1e-12
            step = np.stack(_solve_small(h, g))
            p_new = np.clip(p + step, lo, hi)
            f_new, jac_new = model.evaluate(p_new, tau, lp)
            sse_new = ((y - f_new) ** 2).sum(axis=0)
            acc = np.isfinite(sse_new) & (sse_new < sse)
            p = np.where(acc, p_new, p)
            f = np.where(acc, f_new, f)
            jac = [np.where(acc, jn, jo) for jn, jo in zip(jac_new, jac, strict=True)]
            sse = np.where(acc, sse_new, sse)
            mu = np.where(acc, np.maximum(mu * 0.3, 1e-7), np.minimum(mu * 5.0, 1e7))
    return p, sse


# ------------------------------------------------------------------------------------------------ selection
@dataclass
class CurveModels:
    """Multi-model results for a batch of curves (flat arrays, N)."""

    model: np.ndarray  # uint8 KineticModel codes
    tia: np.ndarray    # Bq*h/mL
    r2: np.ndarray     # R^2 of the selected model (NaN where none)
    aicc: dict[int, np.ndarray]  # AICc per fitted model (inf where not a candidate)
    tia_by_model: dict[int, np.ndarray]  # TIA per fitted model (NaN where not a candidate)
    #: the selected model as a1 e^{-l1 t} + a2 e^{-l2 t} (rows a1, l1 per h, a2, l2 per h; amplitudes relative to
    #: the curve's peak; a2 = 0 for the mono-exponential), (4, N) float32, NaN where no model was selected
    components: np.ndarray | None = None


def models_from_curves(curves: np.ndarray, hours: Sequence[float] | np.ndarray, *,
                       lambda_phys: float = LU177_LAMBDA_PER_H, min_activity: float = 0.0,
                       models: Sequence[int] | None = None, n_iter: int = DEFAULT_LM_ITERATIONS,
                       dtype: Any = np.float64) -> CurveModels:
    """Fit the eligible models to each column of ``curves`` (T, N) in Bq/mL and select by AICc."""
    h = validate_hours(hours)
    n_t = h.size
    c = np.maximum(np.asarray(curves, dtype=dtype), 0)
    if c.ndim != 2 or c.shape[0] != n_t:
        raise CorxError(f"curves must be (T={n_t}, N), got shape {c.shape}")
    codes = eligible_models(n_t) if models is None else [m for m in models if m in eligible_models(n_t)]
    n = c.shape[1]
    trap = trapezoid_tail(c.astype(np.float32), h, lambda_phys).astype(np.float32)
    peak = c.max(axis=0)
    fit_mask = peak > min_activity
    model = np.where(fit_mask, KineticModel.NONE, KineticModel.BELOW_THRESHOLD).astype(np.uint8)
    tia = trap.copy()
    r2_sel = np.full(n, np.nan, np.float32)
    aiccs: dict[int, np.ndarray] = {m: np.full(n, np.inf, np.float32) for m in codes}
    tias: dict[int, np.ndarray] = {m: np.full(n, np.nan, np.float32) for m in codes}
    components = np.full((4, n), np.nan, np.float32)
    idx = np.flatnonzero(fit_mask)
    if idx.size == 0 or not codes:
        return CurveModels(model, tia, r2_sel, aiccs, tias, components)

    ysub = c[:, idx]
    scale = ysub.max(axis=0)
    y = ysub / scale
    tmax = float(h[-1])
    tau = (h / tmax).astype(dtype)[:, None]
    t1 = float(tau[0, 0])
    lp = lambda_phys * tmax
    sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    floor = n_t * SSE_FLOOR ** 2
    best = np.full(idx.size, np.inf)
    chosen = np.full(idx.size, KineticModel.NONE, np.uint8)
    chosen_tia = np.full(idx.size, np.nan)
    chosen_r2 = np.full(idx.size, np.nan)
    chosen_parts = np.full((4, idx.size), np.nan)
    with np.errstate(all="ignore"):
        for code in codes:
            k = MODEL_PARAMS[code]
            if code == KineticModel.MONOEXP:
                a0, lam, sse, ok = fit_monoexp(y, tau[:, 0] * tmax, n_iter=4)
                a0, lam, sse = (np.asarray(v, dtype=np.float64) for v in (a0, lam, sse))
                lam_s = lam * tmax
                e1 = np.exp(-lam_s * t1)
                area = 0.5 * t1 * a0 * e1 + a0 * e1 / lam_s
                valid = ok & (lam_s > lp)
                parts = np.stack([a0, lam_s, np.zeros_like(a0), lam_s])
            else:
                mdl = _LM_MODELS[code]
                p, sse = fit_model(mdl, y, tau, lp, n_iter=n_iter)
                area = mdl.area(p, t1, lp)
                valid = np.all(np.isfinite(p), axis=0)
                parts = np.stack(np.broadcast_arrays(*mdl.components(p, lp)))
            r2 = 1 - sse / sst
            valid = valid & np.isfinite(sse) & (r2 > R2_MIN) & np.isfinite(area) & (area > 0)
            crit = np.where(valid, aicc(np.maximum(sse, floor), n_t, k), np.inf)
            tia_m = area * tmax * scale
            aiccs[code][idx] = crit
            tias[code][idx] = np.where(valid, tia_m, np.nan)
            win = crit < best
            best = np.where(win, crit, best)
            chosen = np.where(win, code, chosen).astype(np.uint8)
            chosen_tia = np.where(win, tia_m, chosen_tia)
            chosen_r2 = np.where(win, r2, chosen_r2)
            chosen_parts = np.where(win, parts, chosen_parts)
    model[idx] = chosen
    has = chosen != KineticModel.NONE
    tia[idx[has]] = chosen_tia[has]
    r2_sel[idx[has]] = chosen_r2[has]
    chosen_parts[1] /= tmax  # rates per scaled time -> per hour
    chosen_parts[3] /= tmax
    components[:, idx[has]] = chosen_parts[:, has]
    return CurveModels(model, tia, r2_sel, aiccs, tias, components)


@dataclass
class MultiModelResult:
    """Voxel-wise multi-model TIA maps (X, Y, Z)."""

    model: np.ndarray            # uint8 KineticModel codes
    tia_mbqh_per_ml: np.ndarray  # float32
    r2: np.ndarray               # float32, NaN where no model was selected
    voxel_volume_ml: float
    params: dict[str, Any] = field(default_factory=dict)
    #: (4, X, Y, Z) float32: the selected model as a1 e^{-l1 t} + a2 e^{-l2 t} (a1, l1 per h, a2, l2 per h;
    #: amplitudes relative to the voxel's peak), NaN where no model was selected (:class:`CurveModels`)
    components: np.ndarray | None = None

    def model_counts(self) -> dict[str, int]:
        """Voxels per selected model name."""
        return {MODEL_NAMES[code]: n for code, n in code_counts(self.model).items()}


def compute_tia_multimodel(activity: np.ndarray, hours: Sequence[float] | np.ndarray, voxel_volume_ml: float,
                           *, threshold_fraction: float = 0.01, lambda_phys: float = LU177_LAMBDA_PER_H,
                           models: Sequence[int] | None = None, n_iter: int = DEFAULT_LM_ITERATIONS,
                           names: Sequence[str] | None = None, threads: int | None = None,
                           chunk: int = 1 << 14) -> MultiModelResult:
    """Multi-model TIA of (T, X, Y, Z) activity (Bq/mL); voxels whose peak is below ``threshold_fraction``
    of the image's highest peak are not fitted (model 0, trapezoid + tail)."""
    h = validate_hours(hours)
    act = np.asarray(activity)
    if act.ndim != 4:
        raise CorxError(f"activity must be (T, X, Y, Z), got shape {act.shape}")
    validate_activity(act, h, names)
    if len(h) < 4:
        raise CorxError(f"multi-model fitting needs at least 4 time points, got {len(h)}")
    spatial = act.shape[1:]
    flat = act.reshape(act.shape[0], -1)
    peak = flat.max(axis=0)
    min_activity = float(threshold_fraction) * float(peak.max()) if peak.size else 0.0
    n = flat.shape[1]
    model = np.empty(n, np.uint8)
    tia = np.empty(n, np.float32)
    r2 = np.empty(n, np.float32)
    components = np.empty((4, n), np.float32)

    def work(s: slice) -> None:
        res = models_from_curves(flat[:, s], h, lambda_phys=lambda_phys, min_activity=min_activity,
                                 models=models, n_iter=n_iter)
        model[s] = res.model
        tia[s] = res.tia * np.float32(1e-6)
        r2[s] = res.r2
        components[:, s] = res.components

    # put fitted voxels in dense chunks: the work is in the voxels above the threshold
    order = np.argsort(peak <= min_activity, kind="stable")
    flat = flat[:, order]
    map_chunks(work, n, chunk=chunk, threads=threads)
    inv = np.empty_like(order)
    inv[order] = np.arange(n)
    params = {"threshold_fraction": threshold_fraction, "min_activity_bq_per_ml": min_activity,
              "models": [MODEL_NAMES[m] for m in (models or eligible_models(len(h)))
                         if m in eligible_models(len(h))],
              "lm_iterations": n_iter, "r2_min": R2_MIN, "codes": MODEL_NAMES}
    return MultiModelResult(model=model[inv].reshape(spatial), tia_mbqh_per_ml=tia[inv].reshape(spatial),
                            r2=r2[inv].reshape(spatial), voxel_volume_ml=float(voxel_volume_ml), params=params,
                            components=components[:, inv].reshape(4, *spatial))

"""177Lu-DOTATATE kinetics per compartment: sums of exponentials with analytic time integrals.

A compartment's activity concentration is  C(t) = sum_j a_j exp(-(mu_j + lambda_phys) t)  [Bq/mL], t in hours,
with C(0) = sum_j a_j >= 0. Uptake-washout curves use a negative term: A (f e^{-k_f t} + (1-f) e^{-k_s t}
- e^{-k_u t}), which starts at 0, rises with the uptake rate k_u and washes out bi-exponentially.
The time-integrated activity from 0 to infinity is  TIA = sum_j a_j / (mu_j + lambda_phys)  [Bq h/mL].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spec import LAMBDA_PHYS

LN2 = float(np.log(2.0))


@dataclass(frozen=True)
class Curve:
    """C(t) = sum_j coef[j] * exp(-(rate[j] + lambda_phys) * t), Bq/mL with t in hours."""

    coef: tuple[float, ...]
    rate: tuple[float, ...]  # biological rate constants, 1/h

    def __call__(self, t: float | np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        out = np.zeros_like(t)
        for a, mu in zip(self.coef, self.rate, strict=True):
            out = out + a * np.exp(-(mu + LAMBDA_PHYS) * t)
        return out

    def tia(self) -> float:
        """Analytic integral from 0 to infinity, Bq*h/mL."""
        return float(sum(a / (mu + LAMBDA_PHYS) for a, mu in zip(self.coef, self.rate, strict=True)))

    def scaled(self, factor: float) -> Curve:
        return Curve(tuple(a * factor for a in self.coef), self.rate)

    def to_dict(self) -> dict[str, list[float]]:
        return {"coef_bq_per_ml": [float(a) for a in self.coef], "rate_per_h": [float(r) for r in self.rate]}


def uptake_washout(amplitude: float, t_up: float, fast_fraction: float, t_fast: float, t_slow: float) -> Curve:
    """Uptake (half-time t_up, h) followed by bi-exponential biological washout (half-times t_fast, t_slow)."""
    k_u, k_f, k_s = LN2 / t_up, LN2 / t_fast, LN2 / t_slow
    coef = (amplitude * fast_fraction, amplitude * (1.0 - fast_fraction), -amplitude)
    return Curve(coef, (k_f, k_s, k_u))


def clearance(amplitude: float, fast_fraction: float, t_fast: float, t_slow: float) -> Curve:
    """Bi-exponential clearance from C(0) = amplitude (blood)."""
    return Curve((amplitude * fast_fraction, amplitude * (1.0 - fast_fraction)), (LN2 / t_fast, LN2 / t_slow))


def _lognormal(rng: np.random.Generator, median: float, sigma: float) -> float:
    return float(median * np.exp(rng.normal(0.0, sigma)))


def draw_curves(rng: np.random.Generator, injected_gbq: float, n_tumours: int) -> dict[str, Curve]:
    """Per-patient curves (Bq/mL) for the compartments; amplitudes scale with the injected activity.

    Medians (per GBq injected, MBq/mL plateau) and biological half-times (h):
      kidney cortex 0.09, uptake 1 h, washout 25 % at 4 h + 75 % at 90 h (medulla = 0.35-0.6 x cortex);
      liver 0.0065, uptake 1.5 h, 10 % at 6 h + 90 % at 250 h; spleen 0.02, 1.5 h, 10 % at 6 h + 90 % at 150 h;
      tumours 0.16 (lognormal sd 0.6), uptake 3 h, 5 % at 10 h + 95 % at 600 h (retained longer than kidneys);
      bladder/urine 0.45, filling 0.3 h, voiding 4 h (98 %) + 30 h tail: highest early;
      blood C(0) 0.15 with 97 % at 1 h + 3 % at 30 h; remainder 0.012, uptake 0.3 h, 75 % at 2 h + 25 % at 60 h.
    """
    g = injected_gbq * 1e6  # Bq/mL per (MBq/mL per GBq) ... amplitudes below are MBq/mL per GBq

    def hl(median: float, sigma: float = 0.2) -> float:
        return _lognormal(rng, median, sigma)

    cortex_amp = _lognormal(rng, 0.09, 0.2)
    curves: dict[str, Curve] = {
        "kidney_cortex": uptake_washout(cortex_amp * g, hl(1.0), rng.uniform(0.15, 0.35), hl(4.0), hl(90.0, 0.25)),
    }
    curves["kidney_medulla"] = curves["kidney_cortex"].scaled(rng.uniform(0.35, 0.6))
    curves["liver"] = uptake_washout(_lognormal(rng, 0.0065, 0.25) * g, hl(1.5), rng.uniform(0.05, 0.15),
                                     hl(6.0), hl(250.0, 0.3))
    curves["spleen"] = uptake_washout(_lognormal(rng, 0.02, 0.3) * g, hl(1.5), rng.uniform(0.05, 0.15),
                                      hl(6.0), hl(150.0, 0.3))
    curves["bladder"] = Curve(tuple(np.array([0.98, 0.02, -1.0]) * _lognormal(rng, 0.45, 0.3) * g),
                              (LN2 / hl(4.0, 0.25), LN2 / hl(30.0), LN2 / hl(0.3)))
    curves["blood"] = clearance(_lognormal(rng, 0.15, 0.2) * g, rng.uniform(0.96, 0.985), hl(1.0), hl(30.0))
    curves["remainder"] = uptake_washout(_lognormal(rng, 0.012, 0.2) * g, hl(0.3), rng.uniform(0.65, 0.85),
                                         hl(2.0), hl(60.0))
    for k in range(n_tumours):
        curves[f"tumour_{k + 1}"] = uptake_washout(_lognormal(rng, 0.16, 0.6) * g, hl(3.0), rng.uniform(0.0, 0.1),
                                                   hl(10.0), hl(600.0, 0.35))
    return curves


def effective_half_life(curve: Curve, t0: float = 48.0, t1: float = 120.0) -> float:
    """Apparent half-life (h) of a curve between two late times (for summaries and checks)."""
    c0, c1 = float(curve(t0)), float(curve(t1))
    return float((t1 - t0) * LN2 / np.log(c0 / c1)) if c0 > 0 and c1 > 0 and c0 != c1 else float("inf")

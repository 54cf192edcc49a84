"""BED and EQD2: the Lea-Catcheside mono-exponential formula, tissue parameters by VOI, overrides, outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from corx.dosimetry.bed import bed_gy, bed_map, effective_half_life_h, eqd2_gy, load_radiobiology, tissue_of
from corx.dosimetry.physics import LU177_HALF_LIFE_H
from corx.dosimetry.voi import Voi
from corx.errors import CorxError


def test_bed_formula_by_hand() -> None:
    # kidneys, 20 Gy, T_eff 50 h: 20 + 400 * (2.8 / 52.8) / 2.6 = 28.157 Gy; EQD2 = BED / (1 + 2/2.6)
    bed = float(bed_gy(20.0, 50.0, 2.6, 2.8))
    assert bed == pytest.approx(20 + 400 * (2.8 / 52.8) / 2.6, rel=1e-12)
    assert float(eqd2_gy(bed, 2.6)) == pytest.approx(bed / (1 + 2 / 2.6))
    assert float(bed_gy(0.0, 50.0, 2.6, 2.8)) == 0.0
    # faster clearance (shorter T_eff) delivers the same dose at a higher rate: more BED
    assert float(bed_gy(20.0, 20.0, 2.6, 2.8)) > bed > float(bed_gy(20.0, 150.0, 2.6, 2.8))


def test_defaults_and_override(tmp_path: Path) -> None:
    params = load_radiobiology()
    assert (params["kidneys"].alpha_beta_gy, params["kidneys"].t_rep_h) == (2.6, 2.8)
    assert (params["tumours"].alpha_beta_gy, params["tumours"].t_rep_h) == (10.0, 1.5)
    assert (params["other"].alpha_beta_gy, params["other"].t_rep_h) == (3.0, 2.5)
    override = tmp_path / "rb.json"
    override.write_text(json.dumps({"kidneys": {"alpha_beta_gy": 2.0}}))
    changed = load_radiobiology(override)
    assert changed["kidneys"].alpha_beta_gy == 2.0 and changed["kidneys"].t_rep_h == 2.8
    override.write_text(json.dumps({"liver": {"alpha_beta_gy": 2.0}}))
    with pytest.raises(CorxError, match="unknown tissue"):
        load_radiobiology(override)
    override.write_text(json.dumps({"tumours": {"t_rep_h": -1}}))
    with pytest.raises(CorxError, match="must be positive"):
        load_radiobiology(override)


def test_bed_map_uses_each_voxels_tissue_and_half_life() -> None:
    assert [tissue_of(n) for n in ("kidneys", "tumour_2", "liver", "label_4")] == ["kidneys", "tumours", "other",
                                                                                  "other"]
    dose = np.full((2, 2, 2), 10.0, np.float32)
    lam = np.full(dose.shape, math.log(2) / 40.0, np.float32)  # T_eff 40 h
    lam[1, 1, 1] = np.nan  # not fitted: physical half-life
    labels = np.zeros(dose.shape, np.int32)
    labels[0] = 6  # kidney cortex
    labels[1, 0] = 11  # tumour
    result = bed_map(dose, lam, labels, [Voi("kidneys", (6, 7)), Voi("tumour_1", (11,))])
    np.testing.assert_allclose(result.bed_gy[0], bed_gy(10.0, 40.0, 2.6, 2.8), rtol=1e-6)
    np.testing.assert_allclose(result.bed_gy[1, 0], bed_gy(10.0, 40.0, 10.0, 1.5), rtol=1e-6)
    assert result.bed_gy[1, 1, 0] == pytest.approx(float(bed_gy(10.0, 40.0, 3.0, 2.5)), rel=1e-6)
    assert result.bed_gy[1, 1, 1] == pytest.approx(float(bed_gy(10.0, LU177_HALF_LIFE_H, 3.0, 2.5)), rel=1e-6)
    assert result.t_eff_fallback_fraction == pytest.approx(1 / 8)
    assert float(effective_half_life_h(-0.01)) == LU177_HALF_LIFE_H  # a rising curve is not a decay


def _g_by_quadrature(a1: float, l1: float, a2: float, l2: float, t_rep_h: float) -> float:
    """Lea-Catcheside G by direct numerical double integration (trapezoid on a fine grid, 0-3000 h)."""
    t = np.linspace(0.0, 3000.0, 300_001)
    rate = a1 * np.exp(-l1 * t) + a2 * np.exp(-l2 * t)
    mu = math.log(2.0) / t_rep_h
    dt = t[1] - t[0]
    # inner(t) = int_0^t R(w) e^{-mu (t - w)} dw, by the recursion inner' = R - mu inner (exact per step)
    inner = np.zeros_like(t)
    decay = math.exp(-mu * dt)
    for i in range(1, t.size):
        inner[i] = inner[i - 1] * decay + 0.5 * dt * (rate[i - 1] * decay + rate[i])
    dose = np.trapz(rate, t)
    return float(2.0 * np.trapz(rate * inner, t) / dose**2)


@pytest.mark.parametrize("curve", [(1.0, 0.02, 0.0, 0.02),          # mono-exponential, T_eff 34.7 h
                                   (1.0, math.log(2) / 159.5, -1.0, 0.5),  # uptake (2 h scale), then trapped
                                   (1.0, 0.01, -1.0, 0.1),            # uptake-washout
                                   (0.7, 0.3, 0.3, 0.012)])           # bi-exponential: fast and slow phases
def test_lea_catcheside_factor_of_two_exponentials_matches_quadrature(curve: tuple[float, ...]) -> None:
    from corx.dosimetry.bed import lea_catcheside_factor

    g = float(lea_catcheside_factor(np.array(curve)[:, None], 2.8)[0])
    assert g == pytest.approx(_g_by_quadrature(*curve, 2.8), rel=2e-3)
    if curve[2] == 0.0:  # one exponential: the closed form T_rep / (T_rep + T_eff)
        t_eff = math.log(2) / curve[1]
        assert g == pytest.approx(2.8 / (2.8 + t_eff), rel=1e-12)
    assert np.isnan(lea_catcheside_factor(np.array([[1.0], [0.0], [0.0], [0.1]]), 2.8)[0])  # no decay: no G


def test_bed_map_uses_the_selected_two_exponential_curve() -> None:
    """Where the multi-model fit selected an uptake or bi-exponential curve, its G replaces the mono one."""
    from corx.dosimetry.bed import bed_from_factor, lea_catcheside_factor
    from corx.dosimetry.kinetics_models import KineticModel

    dose = np.full((4,), 10.0, np.float32)
    lam = np.full(dose.shape, math.log(2) / 40.0, np.float32)
    codes = np.array([KineticModel.MONOEXP, KineticModel.UPTAKE_WASHOUT, KineticModel.BIEXP, KineticModel.BIEXP],
                     np.uint8)
    comps = np.array([[1.0, 1.0, 0.7, 0.7], [0.05, 0.01, 0.3, 0.3], [0.0, -1.0, 0.3, 0.3], [0.05, 0.1, 0.012, 0.0]],
                     np.float32)  # the last curve does not decay: no G of its own, the mono one is kept
    result = bed_map(dose, lam, multimodel=(codes, comps))
    mono = float(bed_gy(10.0, 40.0, 3.0, 2.5))
    assert result.bed_gy[0] == pytest.approx(mono, rel=1e-6)  # mono: eq.-6 fit
    assert result.bed_gy[3] == pytest.approx(mono, rel=1e-6)
    for i in (1, 2):
        g = float(lea_catcheside_factor(comps[:, i:i + 1], 2.5)[0])
        assert result.bed_gy[i] == pytest.approx(float(bed_from_factor(10.0, g, 3.0)), rel=1e-6)
        assert result.bed_gy[i] != pytest.approx(result.bed_gy[0], rel=1e-3)
    assert result.two_exponential_fraction == pytest.approx(2 / 4)


def test_multimodel_components_reproduce_the_fitted_tia() -> None:
    """The stored curve of each selected model integrates (with the straight-line start) to its TIA."""
    from corx.dosimetry.kinetics_models import KineticModel, models_from_curves

    hours = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])
    curves = np.stack([100.0 * np.exp(-0.03 * hours),
                       80.0 * (np.exp(-0.01 * hours) - np.exp(-0.4 * hours)),
                       60.0 * np.exp(-0.5 * hours) + 40.0 * np.exp(-0.01 * hours)], axis=1)
    res = models_from_curves(curves, hours)
    assert res.components is not None
    assert res.model.tolist() == [KineticModel.MONOEXP, KineticModel.UPTAKE_WASHOUT, KineticModel.BIEXP]
    t1 = hours[0]
    for i in range(3):
        a1, l1, a2, l2 = (float(v) for v in res.components[:, i])
        peak = curves[:, i].max()
        f1 = a1 * math.exp(-l1 * t1) + a2 * math.exp(-l2 * t1)
        area = 0.5 * t1 * f1 + a1 * math.exp(-l1 * t1) / l1 + a2 * math.exp(-l2 * t1) / l2
        assert area * peak == pytest.approx(float(res.tia[i]), rel=1e-4), (i, res.model[i])

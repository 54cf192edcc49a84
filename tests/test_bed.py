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

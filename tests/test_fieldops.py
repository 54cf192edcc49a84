"""Field arithmetic on analytic fields with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corx_bundle.scripts.fieldops import field_to_mm, jacobian_determinant, nonpositive_jacobian_percent
from corx_bundle.scripts.metrics import WarpedPairMetric
from corx_bundle.scripts.metrics import jacobian_determinant as torch_jacobian


def grid(shape: tuple[int, int, int]) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))


def test_linear_field_has_the_analytic_determinant() -> None:
    a = np.array([[0.1, 0.05, 0.0], [-0.02, 0.2, 0.03], [0.0, 0.01, -0.3]])
    u = np.einsum("ij,j...->i...", a, grid((9, 10, 11)))
    det = jacobian_determinant(u)
    assert det.dtype == np.float32  # float32 throughout, like the fields
    np.testing.assert_allclose(det, np.linalg.det(np.eye(3) + a), rtol=1e-6)
    assert nonpositive_jacobian_percent(u) == 0.0


def test_folding_is_detected_where_it_happens() -> None:
    p = grid((20, 6, 6))
    # u_0 = -1.5 * x on the first half (det = -0.5 there), zero elsewhere
    u = np.zeros_like(p)
    u[0] = np.where(p[0] < 10, -1.5 * p[0], -15.0)
    det = jacobian_determinant(u)
    assert np.all(det[1:9] < 0) and np.all(det[11:] == 1.0)
    mask = np.zeros(det.shape, bool)
    mask[11:] = True
    assert nonpositive_jacobian_percent(u, mask) == 0.0
    assert 40.0 < nonpositive_jacobian_percent(u) < 55.0


def test_torch_metric_uses_the_same_jacobian() -> None:
    rng = np.random.default_rng(0)
    u = rng.normal(0, 0.6, (3, 8, 8, 8))
    np.testing.assert_allclose(torch_jacobian(torch.as_tensor(u)[None])[0].numpy(), jacobian_determinant(u),
                               rtol=1e-5, atol=1e-5)
    metric = WarpedPairMetric("nonpositive_jacobian_pct")
    metric(torch.as_tensor(u, dtype=torch.float32)[None], torch.zeros(1, 4, 8, 8, 8))
    assert metric.aggregate().item() == pytest.approx(nonpositive_jacobian_percent(u), abs=1e-4)


def test_field_to_mm_follows_the_affine() -> None:
    las = np.diag([-2.0, 3.0, 4.0, 1.0])
    u = np.ones((3, 2, 2, 2))
    np.testing.assert_allclose(field_to_mm(u, las)[:, 0, 0, 0], [-2.0, 3.0, 4.0])


def test_bad_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(3, X, Y, Z\)"):
        jacobian_determinant(np.zeros((2, 4, 4, 4)))

"""PairBoundLoss: the hybrid loss bound to one pair gives the same value and gradient as the plain loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from corx_bundle.scripts.losses import HybridRegistrationLoss, PairBoundLoss

SIZE = 28


def pair_images(seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    channels = [ndimage.gaussian_filter(rng.random((SIZE,) * 3), 2.0) for _ in range(4)]
    channels = [(c - c.min()) / (c.max() - c.min()) for c in channels]
    return torch.from_numpy(np.stack(channels)[None].astype(np.float32))


def smooth_field(seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal((SIZE,) * 3), 4.0) for _ in range(3)])
    return torch.from_numpy((3.0 * field / np.abs(field).max())[None].astype(np.float32))


@pytest.mark.parametrize("weights", [{}, {"ct_weight": 0.0, "spect_weight": 1.0}, {"spect_weight": 0.0},
                                     {"reg_weight": 0.1, "lncc_kernel": 5}])
def test_bound_loss_matches_the_plain_loss_in_value_and_gradient(weights: dict[str, float]) -> None:
    images, start = pair_images(1), smooth_field(2)
    plain = HybridRegistrationLoss(**weights)
    bound = PairBoundLoss(plain, images)
    grads = []
    for fn in (lambda f: plain(f, images), bound):
        field = start.clone().requires_grad_(True)
        value = fn(field)
        value.backward()
        grads.append((value.detach(), field.grad))
    (v_plain, g_plain), (v_bound, g_bound) = grads
    torch.testing.assert_close(v_bound, v_plain, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_bound, g_plain, rtol=1e-4, atol=1e-5 * float(g_plain.abs().max()))
    assert float(g_plain.abs().max()) > 0  # the comparison is not between two zero gradients


def test_bound_loss_refuses_field_of_view_masks_and_wrong_fields() -> None:
    images = pair_images(3)
    with pytest.raises(ValueError, match="without field-of-view masks"):
        PairBoundLoss(HybridRegistrationLoss(), torch.cat([images, torch.ones_like(images)], dim=1))
    with pytest.raises(ValueError, match="expected ddf"):
        PairBoundLoss(HybridRegistrationLoss(), images)(torch.zeros(1, 3, SIZE, SIZE, SIZE - 1))

"""The overlap-only loss: images compared only where both were acquired (field-of-view masks in the target)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from corx_bundle.scripts.losses import HybridRegistrationLoss

SIZE = 32


def blobs(seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((size,) * 3), 2.0)
    return ((smooth - smooth.min()) / (smooth.max() - smooth.min())).astype(np.float32)


def target(images: list[np.ndarray], masks: list[np.ndarray] | None = None) -> torch.Tensor:
    channels = images + (masks or [])
    return torch.from_numpy(np.stack(channels)[None].astype(np.float32))


def test_full_masks_give_the_plain_loss() -> None:
    images = [blobs(s) for s in range(4)]
    ddf = torch.zeros(1, 3, SIZE, SIZE, SIZE)  # a field that samples outside the grid would shrink the overlap
    loss = HybridRegistrationLoss()
    plain = loss(ddf, target(images))
    masked = loss(ddf, target(images, [np.ones_like(images[0])] * 4))
    torch.testing.assert_close(masked, plain, rtol=1e-5, atol=1e-7)


def test_content_outside_either_field_of_view_is_ignored() -> None:
    images = [blobs(s) for s in range(4)]
    fixed_fov = np.ones_like(images[0])
    fixed_fov[..., -6:] = 0  # fixed acquisition shorter at the superior end
    moving_fov = np.ones_like(images[0])
    moving_fov[..., :5] = 0  # moving acquisition shorter at the inferior end
    masks = [fixed_fov, moving_fov, fixed_fov, moving_fov]
    ddf = torch.zeros(1, 3, SIZE, SIZE, SIZE)
    loss = HybridRegistrationLoss()
    changed = [im.copy() for im in images]
    for c in (0, 2):
        changed[c][..., -6:] = 5.0  # fixed images where the fixed scan saw nothing
    for c in (1, 3):
        changed[c][..., :5] = -3.0  # moving images where the moving scan saw nothing
    torch.testing.assert_close(loss(ddf, target(changed, masks)), loss(ddf, target(images, masks)))
    assert abs(float(loss(ddf, target(changed))) - float(loss(ddf, target(images)))) > 1e-3  # plain loss sees it


def best_axial_shift(masked: bool) -> float:
    """The axial translation (voxels, 0.25 steps) that minimises the CT loss between two zero-padded scans of
    different axial extent whose content differs by a shift of 2 voxels."""
    full = blobs(7, SIZE + 8)
    shift = 2  # moving(p) = fixed(p - shift) along the last axis, so the pull-back field is u = +shift
    fixed = full[4:-4, 4:-4, 4:-4].copy()
    moving = full[4:-4, 4:-4, 4 - shift : -4 - shift].copy()
    fixed_fov, moving_fov = np.ones_like(fixed), np.ones_like(fixed)
    fixed_fov[..., 26:] = 0
    moving_fov[..., :9] = 0
    fixed, moving = fixed * fixed_fov, moving * moving_fov  # zero-padded as after resampling onto one grid
    y = target([fixed, moving, fixed, moving], [fixed_fov, moving_fov, fixed_fov, moving_fov] if masked else None)
    loss_fn = HybridRegistrationLoss(spect_weight=0.0, reg_weight=0.0)
    candidates = np.arange(-1.0, 8.01, 0.25)
    with torch.no_grad():
        losses = [float(loss_fn(torch.tensor([0.0, 0.0, t]).view(1, 3, 1, 1, 1).expand(1, 3, SIZE, SIZE, SIZE), y))
                  for t in candidates]
    return float(candidates[int(np.argmin(losses))])


def test_the_overlap_only_loss_has_its_minimum_at_the_true_shift() -> None:
    assert best_axial_shift(masked=True) == 2.0


def test_the_plain_loss_is_pulled_away_by_zero_padding() -> None:
    assert abs(best_axial_shift(masked=False) - 2.0) >= 1.0  # the bias the overlap-only loss removes


def test_target_of_the_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match="4 or 8"):
        HybridRegistrationLoss()(torch.zeros(1, 3, 8, 8, 8), torch.zeros(1, 6, 8, 8, 8))

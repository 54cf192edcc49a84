"""The paper's hybrid registration loss (eq. 2-5): MSE on CT + lambda_SPECT * LNCC on SPECT + lambda_reg * diffusion."""

from __future__ import annotations

import torch
from monai.losses import DiffusionLoss, LocalNormalizedCrossCorrelationLoss
from monai.networks.blocks import Warp
from monai.networks.layers import separable_filtering
from torch import nn

# channels of the network input and of the loss target: fixed CT, moving CT, fixed SPECT, moving SPECT
FIXED_CT, MOVING_CT, FIXED_SPECT, MOVING_SPECT = 0, 1, 2, 3
N_IMAGES = 4  # a loss target of 2 * N_IMAGES channels adds each image's field-of-view mask (scripts.transforms)


class HybridRegistrationLoss(nn.Module):
    """Loss of a predicted displacement field given the 4-channel image pair it was predicted from.

    ``forward(ddf, images)``: ``ddf`` (B, 3, D, H, W) in voxels (pull-back, array-axis order), ``images``
    (B, 4, D, H, W). The moving images are warped with MONAI's ``Warp`` and compared to the fixed ones:
    ``ct_weight * MSE(CT) + spect_weight * (-LNCC(SPECT, 9^3)) + reg_weight * diffusion(ddf)``.
    ``spect_weight=0`` gives the CT-only loss used for TransMorph (the SPECT is then not even warped).
    Defaults are the paper's (lambda_SPECT = 0.1, lambda_reg = 8e-4).

    Overlap-only variant: ``images`` of 8 channels carry each image's field-of-view mask after the 4 images
    (:class:`scripts.transforms.FieldOfViewd`). The CT and SPECT terms are then computed only where the fixed
    image was acquired and the warped moving point falls inside the moving image's field of view (masks warped
    with zero padding and detached, so the field gains nothing by moving images out of view): zero padding and
    shorter acquisitions no longer reward a field that aligns the edges of the fields of view.
    """

    def __init__(self, ct_weight: float = 1.0, spect_weight: float = 0.1, reg_weight: float = 8e-4,
                 lncc_kernel: int = 9) -> None:
        super().__init__()
        if min(ct_weight, spect_weight, reg_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        self.ct_weight, self.spect_weight, self.reg_weight = ct_weight, spect_weight, reg_weight
        self.warp = Warp(mode="bilinear", padding_mode="border")
        self.warp_mask = Warp(mode="bilinear", padding_mode="zeros")
        self.lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=lncc_kernel,
                                                        kernel_type="rectangular")
        self.diffusion = DiffusionLoss()
        self.last_terms: dict[str, float] = {}

    def forward(self, ddf: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] not in (N_IMAGES, 2 * N_IMAGES) or ddf.shape[1] != 3 or ddf.shape[2:] != images.shape[2:]:
            raise ValueError(f"expected ddf (B, 3, *S) and images (B, 4 or 8, *S), got {tuple(ddf.shape)} "
                             f"and {tuple(images.shape)}")
        ddf = ddf.float()
        images = images.float()
        terms: dict[str, torch.Tensor] = {}
        if self.ct_weight:
            warped_ct, fixed_ct, overlap = self._pair(ddf, images, FIXED_CT, MOVING_CT)
            squared = (warped_ct - fixed_ct) ** 2
            terms["ct_mse"] = torch.mean(squared) if overlap is None else \
                (squared * overlap).sum() / overlap.sum().clamp_min(1.0)
        if self.spect_weight:
            warped_spect, fixed_spect, overlap = self._pair(ddf, images, FIXED_SPECT, MOVING_SPECT)
            if overlap is not None:
                warped_spect, fixed_spect = warped_spect * overlap, fixed_spect * overlap
            terms["spect_lncc"] = self.lncc(warped_spect, fixed_spect)
        terms["diffusion"] = self.diffusion(ddf)
        weights = {"ct_mse": self.ct_weight, "spect_lncc": self.spect_weight, "diffusion": self.reg_weight}
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return sum(weights[k] * v for k, v in terms.items())

    def _pair(self, ddf: torch.Tensor, images: torch.Tensor, fixed_c: int,
              moving_c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Warped moving image, fixed image and (8-channel targets only) their overlap mask, detached."""
        warped = self.warp(images[:, moving_c : moving_c + 1], ddf)
        fixed = images[:, fixed_c : fixed_c + 1]
        if images.shape[1] == N_IMAGES:
            return warped, fixed, None
        moving_fov = images[:, N_IMAGES + moving_c : N_IMAGES + moving_c + 1]
        overlap = images[:, N_IMAGES + fixed_c : N_IMAGES + fixed_c + 1] * self.warp_mask(moving_fov, ddf)
        return warped, fixed, overlap.detach()


class PairBoundLoss(nn.Module):
    """A :class:`HybridRegistrationLoss` bound to one 4-channel pair, for many fields (test-time refinement).

    ``forward(ddf)`` equals ``loss(ddf, images)`` (same formula, MONAI's LNCC written out) but costs less per
    call: the fixed SPECT's local sums are computed once (they do not depend on the field), the moving CT and SPECT
    are warped in one call, and the three local sums that do depend on the field are filtered in one call.
    """

    def __init__(self, loss: HybridRegistrationLoss, images: torch.Tensor) -> None:
        super().__init__()
        if images.ndim != 5 or images.shape[1] != N_IMAGES:
            raise ValueError(f"PairBoundLoss needs (B, {N_IMAGES}, D, H, W) images without field-of-view masks, "
                             f"got {tuple(images.shape)}")
        self.loss = loss
        images = images.detach().float()
        self.fixed_ct = images[:, FIXED_CT : FIXED_CT + 1]
        self.fixed_spect = images[:, FIXED_SPECT : FIXED_SPECT + 1]
        self.moving = images[:, [MOVING_CT, MOVING_SPECT]]
        lncc = loss.lncc
        self.kernels = [lncc.kernel.to(images)] * 3
        self.kernel_vol = lncc.kernel_vol.to(images)
        self.smooth_nr, self.smooth_dr = float(lncc.smooth_nr), float(lncc.smooth_dr)
        t = self.fixed_spect
        self.t_sum, t2_sum = separable_filtering(torch.cat([t, t * t], dim=1), self.kernels).split(1, dim=1)
        self.t_var = torch.clamp_min(t2_sum - self.t_sum / self.kernel_vol * self.t_sum, self.smooth_dr)

    def forward(self, ddf: torch.Tensor) -> torch.Tensor:
        if ddf.shape[1] != 3 or ddf.shape[2:] != self.moving.shape[2:]:
            raise ValueError(f"expected ddf (B, 3, *{tuple(self.moving.shape[2:])}), got {tuple(ddf.shape)}")
        loss, ddf = self.loss, ddf.float()
        warped_ct, warped_spect = loss.warp(self.moving, ddf).split(1, dim=1)
        total = loss.reg_weight * loss.diffusion(ddf)
        if loss.ct_weight:
            total = total + loss.ct_weight * torch.mean((warped_ct - self.fixed_ct) ** 2)
        if loss.spect_weight:
            p, t = warped_spect, self.fixed_spect
            p_sum, p2_sum, tp_sum = separable_filtering(torch.cat([p, p * p, p * t], dim=1),
                                                        self.kernels).split(1, dim=1)
            p_avg = p_sum / self.kernel_vol
            cross = tp_sum - p_avg * self.t_sum
            p_var = torch.clamp_min(p2_sum - p_avg * p_sum, self.smooth_dr)
            ncc = (cross * cross + self.smooth_nr) / (self.t_var * p_var)
            total = total - loss.spect_weight * torch.mean(ncc)
        return total

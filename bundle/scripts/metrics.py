"""Registration metrics on (field, 4-channel pair) batches, for the bundle's evaluator (paper section 2.4)."""

from __future__ import annotations

import numpy as np
import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss
from monai.metrics import CumulativeIterationMetric, SSIMMetric
from monai.networks.blocks import Warp

from . import fieldops
from .losses import FIXED_CT, FIXED_SPECT, MOVING_CT, MOVING_SPECT

MEASURES = ("spect_lncc", "spect_ssim", "ct_l1", "ct_mse", "ct_ssim", "nonpositive_jacobian_pct",
            "field_error_mm", "kidney_field_error_mm")
TRUTH_CHANNELS = slice(4, 7)  # true SPECT field (voxels) after the 4 image channels, then the reference labels
TRUTH_LABELS = 7
KIDNEY_LABELS = (6, 7)


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """det(I + grad u) per voxel of a batch of fields (B, 3, D, H, W) in voxels -> (B, D, H, W).

    One implementation for the whole project: :func:`scripts.fieldops.jacobian_determinant` (numpy).
    """
    if ddf.ndim != 5 or ddf.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, D, H, W) field, got {tuple(ddf.shape)}")
    dets = [fieldops.jacobian_determinant(u.detach().float().cpu().numpy()) for u in ddf]
    return torch.as_tensor(np.stack(dets), dtype=torch.float32, device=ddf.device)


class WarpedPairMetric(CumulativeIterationMetric):
    """One registration measure per pair, from the predicted field and the (normalised) input pair.

    ``measure`` is one of MEASURES. Similarities (LNCC, SSIM) are higher-is-better; L1/MSE and the
    percentage of non-positive Jacobian determinants are lower-is-better. Use with MONAI's
    ``IgniteMetricHandler`` and ``from_engine(['pred', 'label'])`` (label = the input pair).
    ``field_error_mm`` / ``kidney_field_error_mm`` (phantom validation): mean |u_pred - u_true| in mm over the body
    (labels > 0) / the kidneys, with the truth in label channels 4-7 (:class:`scripts.transforms.LoadTrueFieldd`)
    on an isotropic grid of ``spacing_mm``.
    """

    def __init__(self, measure: str = "spect_lncc", lncc_kernel: int = 9, spacing_mm: float = 3.87) -> None:
        super().__init__()
        if measure not in MEASURES:
            raise ValueError(f"unknown measure '{measure}' (choose from {', '.join(MEASURES)})")
        self.measure = measure
        self.spacing_mm = float(spacing_mm)
        self.warp = Warp(mode="bilinear", padding_mode="border")
        self.lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=lncc_kernel,
                                                        kernel_type="rectangular", reduction="none")
        self.ssim = SSIMMetric(spatial_dims=3, data_range=1.0)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ddf = y_pred.float()
        if ddf.ndim == 4:  # MONAI may decollate the batch: restore it
            ddf, y = ddf[None], y[None]
        if self.measure == "nonpositive_jacobian_pct":
            return 100.0 * (jacobian_determinant(ddf) <= 0).float().mean(dim=(1, 2, 3))[:, None]
        if self.measure.endswith("field_error_mm"):
            return self._field_error(ddf, y)
        fixed_c, moving_c = (FIXED_SPECT, MOVING_SPECT) if self.measure.startswith("spect") else (FIXED_CT,
                                                                                                  MOVING_CT)
        fixed = y[:, fixed_c : fixed_c + 1].float()
        warped = self.warp(y[:, moving_c : moving_c + 1].float(), ddf)
        if self.measure == "spect_lncc":
            return -self.lncc(warped, fixed).mean(dim=(1, 2, 3, 4))[:, None]
        if self.measure.endswith("ssim"):
            return self.ssim(warped, fixed).reshape(-1, 1)
        diff = warped - fixed
        values = diff.abs() if self.measure == "ct_l1" else diff**2
        return values.mean(dim=(1, 2, 3, 4))[:, None]

    def _field_error(self, ddf: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.shape[1] <= TRUTH_LABELS:
            raise ValueError(f"'{self.measure}' needs the truth in label channels 4-7 (LoadTrueFieldd), got "
                             f"{y.shape[1]} channels")
        labels = y[:, TRUTH_LABELS].round()
        mask = labels > 0 if self.measure == "field_error_mm" else torch.isin(
            labels, torch.tensor(KIDNEY_LABELS, dtype=labels.dtype, device=labels.device))
        err = torch.linalg.vector_norm(ddf - y[:, TRUTH_CHANNELS].float(), dim=1) * self.spacing_mm
        return ((err * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1))[:, None]

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        data = self.get_buffer()
        if data is None or (isinstance(data, torch.Tensor) and data.numel() == 0):
            raise ValueError(f"no values accumulated for metric '{self.measure}'")
        return data.float().mean()

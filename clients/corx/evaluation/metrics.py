"""Per-pair registration metrics of a field on the normalised network input (paper section 2.4, Table 2).

The image metrics are the bundle evaluator's own (``corx_bundle.scripts.metrics.WarpedPairMetric``, torch, imported
lazily): the moving channel of the 4-channel pair is warped with the field (MONAI ``Warp``, bilinear, border) and
compared with the fixed channel:

============== ============================================== =========== ==========================
measure        definition                                     better      symmetric in (fixed, warped)
============== ============================================== =========== ==========================
ct_l1          mean |warped CT - fixed CT| (CT in [0, 1])     lower       yes
ct_mse         mean (warped CT - fixed CT)^2                  lower       yes
ct_ssim        3-D SSIM (MONAI, data range 1) of the CTs      higher      yes
spect_ssim     3-D SSIM of the min-max normalised SPECTs      higher      yes
spect_lncc     mean local NCC^2, 9^3 rectangular window       higher      yes
============== ============================================== =========== ==========================

All are symmetric in the two images they compare, but not in the registration: swapping fixed and moving needs a
different field. ``nonpositive_jacobian_pct`` (numpy, ``fieldops``) is a property of the field alone.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

IMAGE_MEASURES = ("ct_l1", "ct_mse", "ct_ssim", "spect_ssim", "spect_lncc")
NETWORK_VARIANTS = {"corx": "corx", "corx-nocs": "corx_nocs", "transmorph": "transmorph"}


@lru_cache(maxsize=8)
def _metric(measure: str, lncc_kernel: int) -> Any:
    from corx_bundle.scripts.metrics import WarpedPairMetric

    return WarpedPairMetric(measure, lncc_kernel=lncc_kernel)


def image_metrics(field: np.ndarray, image: np.ndarray, measures: tuple[str, ...] = IMAGE_MEASURES,
                  lncc_kernel: int = 9) -> dict[str, float]:
    """The bundle's image measures of ``field`` (3, X, Y, Z) on the normalised pair ``image`` (4, X, Y, Z)."""
    import torch

    u = np.asarray(field, dtype=np.float32)
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 4 or img.shape[0] != 4 or u.shape != (3, *img.shape[1:]):
        raise ValueError(f"expected field (3, X, Y, Z) and pair (4, X, Y, Z), got {u.shape} and {img.shape}")
    ddf = torch.from_numpy(np.ascontiguousarray(u))[None]
    pair = torch.from_numpy(np.ascontiguousarray(img))[None]
    out: dict[str, float] = {}
    with torch.no_grad():
        for m in measures:
            metric = _metric(m, lncc_kernel)
            value = metric(ddf, pair)
            metric.reset()
            out[m] = float(value.reshape(-1)[0])
    return out


def folding_percent(field: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Percentage of voxels (in ``mask`` if given) with a non-positive Jacobian determinant (Table 2)."""
    from corx_bundle.scripts.fieldops import nonpositive_jacobian_percent

    return nonpositive_jacobian_percent(np.asarray(field, dtype=np.float64), mask)


@lru_cache(maxsize=8)
def parameter_count(method: str, affine_head: bool = False) -> int | None:
    """Trainable parameters of a network method (built with random weights; ``affine_head``: with the optional
    global affine head, as weights that hold one need); None for non-network methods."""
    variant = NETWORK_VARIANTS.get(method)
    if variant is None:
        return None
    from corx_bundle.scripts.network import build_network, count_parameters

    return int(count_parameters(build_network(variant, affine_head=affine_head)))

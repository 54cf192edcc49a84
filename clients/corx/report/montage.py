"""A PNG montage of serial SPECT/CT: coronal CT and SPECT at each time point, on the reference grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..geometry.resample import resample_to_grid
from ..io.imageio import atomic_path, read_array
from ..io.manifest import Manifest

CT_WINDOW_HU = (-350.0, 450.0)  # soft-tissue window for display


def coronal(volume: np.ndarray, j: int) -> np.ndarray:
    """A coronal slice (array axis 1 fixed), oriented for display with superior at the top."""
    return np.rot90(volume[:, j, :])


def write_montage(manifest: Manifest, target: Path, overwrite: bool = False) -> Path:
    """Write one row per modality (CT, SPECT, fused) and one column per time point.

    Every image is resampled onto the reference SPECT grid, so the same anatomy at the same place shows as
    the same pixel: what moves between columns is misalignment. A crosshair marks the reference's hottest
    (smoothed) SPECT voxel in every panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    ref_spect, ref_affine = read_array(manifest.reference_timepoint.spect)
    smooth = ndimage.gaussian_filter(ref_spect, 2.0)
    # the hottest spot outside the lowest 40 % of slices (skips an early, bladder-dominated maximum)
    smooth[:, :, : int(0.4 * smooth.shape[2])] = 0
    hot = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    j = int(hot[1])

    n = len(manifest.timepoints)
    fig, axes = plt.subplots(3, n, figsize=(3.2 * n, 9.6), squeeze=False)
    for col, tp in enumerate(manifest.timepoints):
        ct, ct_affine = read_array(tp.ct)
        spect, spect_affine = read_array(tp.spect)
        ct_ref = resample_to_grid(ct, ct_affine, ref_spect.shape, ref_affine, order=1, cval=-1000)
        spect_ref = resample_to_grid(spect, spect_affine, ref_spect.shape, ref_affine, order=1)
        ct_sl = coronal(ct_ref, j)
        sp_sl = coronal(spect_ref, j) / 1e6  # MBq/mL
        vmax = float(np.percentile(sp_sl, 99.8)) or 1.0
        panels = (("CT", ct_sl, "gray", CT_WINDOW_HU), ("SPECT MBq/mL", sp_sl, "hot", (0, vmax)))
        for row, (name, img, cmap, (lo, hi)) in enumerate(panels):
            axes[row, col].imshow(img, cmap=cmap, vmin=lo, vmax=hi)
            axes[row, col].set_title(f"{tp.id}: {name}" + (" (ref)" if tp.id == manifest.reference else ""),
                                     fontsize=9)
        axes[2, col].imshow(ct_sl, cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1])
        axes[2, col].imshow(np.ma.masked_less(sp_sl, 0.05 * vmax), cmap="hot", alpha=0.55, vmin=0, vmax=vmax)
        axes[2, col].set_title(f"{tp.id}: fused", fontsize=9)
        for row in range(3):
            ax = axes[row, col]
            ax.axhline(ref_spect.shape[2] - 1 - hot[2], color="cyan", lw=0.6)
            ax.axvline(hot[0], color="cyan", lw=0.6)
            ax.set_axis_off()
    fig.suptitle(f"{manifest.patient_id}: coronal slices on the reference ({manifest.reference}) SPECT grid; "
                 "crosshair = reference hot spot", fontsize=10)
    fig.tight_layout()
    with atomic_path(target, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return target

"""Ground-truth measures of a predicted field against the phantom's truth (docs/CONVENTIONS.md, truth/ layout).

Only pairs whose fixed image is the reference time point have truth (``truth/field_spect_<moving>.nii.gz``, the
pull-back field reference -> moving SPECT in voxels of the reference SPECT grid). A predicted field lives on the
network grid (the reference SPECT resampled to the network spacing, cropped/padded): it is resampled to the
reference grid through world space (``u_world = A_net[:3, :3] u_net``, sampled trilinearly at the reference voxel
centres, ``u_ref = A_ref[:3, :3]^-1 u_world``); reference voxels outside the network grid's box are left out. For
the internal cohort (128^3 at 3.87 mm, or 128/D at 3.87 D mm with --downsample D) the two grids coincide and the
field is taken as it is.

Measures (all in the reference frame, over body = labels_ref > 0, kidneys = labels 6, 7, tumours = labels >= 11):

- ``err_<region>_mean_mm`` / ``err_<region>_p95_mm``: |u_pred - u_true| in mm (world), mean and 95th percentile;
- ``ct_err_body_*``: the same against the true CT-to-CT field (fixed CT frame -> moving CT frame, built from the
  truth's CT fields: y = x + u_ct_ref(x) solved for x by fixed-point iteration, v(y) = x + u_ct_moving(x) - y);
  a CT-driven method aims at this one, not at the SPECT field;
- ``dice_organs`` (mean over lungs, liver, spleen, kidneys, bladder, bone present), ``dice_kidneys``,
  ``dice_tumours`` (mean over tumours): each structure of labels_<moving> warped with the field vs labels_ref
  (the structure's indicator warped trilinearly and thresholded at 0.5, see :func:`warp_mask`: nearest-neighbour
  label warping snaps boundaries to the grid, and at the downsampled phantom's 7.74 mm voxels that rounding made
  the true field score below no registration on a pair with sub-voxel kidney motion);
- ``tumour_centroid_mm``: mean over tumours of the distance between the activity-weighted centroid of the warped
  moving SPECT and that of the true activity at the moving time point (truth/activity_<moving>), both inside the
  tumour's reference label dilated by ``dilate_mm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..geometry.displacement import resample_field
from ..geometry.warp import load_field, warp_image
from ..io.imageio import read_array

ORGANS: dict[str, tuple[int, ...]] = {"lungs": (3,), "liver": (4,), "spleen": (5,), "kidneys": (6, 7),
                                      "bladder": (8,), "bone": (9,)}
KIDNEYS = (6, 7)
TUMOUR_BASE = 11


@dataclass(frozen=True)
class PairTruth:
    """Truth of one (reference -> moving) pair, on the reference SPECT grid."""

    u_spect: np.ndarray  # (3, X, Y, Z) voxels
    u_ct_pair: np.ndarray | None  # (3, X, Y, Z) voxels, fixed CT frame -> moving CT frame
    labels_ref: np.ndarray  # (X, Y, Z) uint8
    labels_moving: np.ndarray  # (X, Y, Z) uint8
    activity_moving: np.ndarray  # (X, Y, Z) Bq/mL, true activity at the moving time, reference frame
    moving_spect: np.ndarray  # (X, Y, Z) Bq/mL, the moving SPECT as acquired (same grid)
    affine: np.ndarray  # (4, 4) reference SPECT grid


def true_ct_pair_field(u_ct_ref: np.ndarray, u_ct_moving: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Pull-back field from the fixed (reference) CT frame to the moving CT frame, voxels of the reference grid.

    The reference CT shows reference point x at y = x + u_ct_ref(x); the moving CT at x + u_ct_moving(x). For each
    voxel y, x is found by fixed-point iteration x = y - u_ct_ref(x) (converges: |grad u| <= 0.3 in the phantom).
    """
    ref = np.asarray(u_ct_ref, dtype=np.float64)
    y = np.indices(ref.shape[1:], dtype=np.float64)
    x = y.copy()
    for _ in range(iterations):
        x = y - np.stack([ndimage.map_coordinates(ref[a], x, order=1, mode="nearest") for a in range(3)])
    mov = np.stack([ndimage.map_coordinates(np.asarray(u_ct_moving, np.float64)[a], x, order=1, mode="nearest")
                    for a in range(3)])
    return (x + mov - y).astype(np.float32)


def error_stats(u_pred: np.ndarray, u_true: np.ndarray, affine: np.ndarray,
                regions: dict[str, np.ndarray], prefix: str = "err") -> dict[str, float]:
    """Mean and 95th percentile of |u_pred - u_true| in mm per region mask (NaN for an empty region)."""
    diff = np.einsum("ab,b...->a...", np.asarray(affine, np.float64)[:3, :3],
                     np.asarray(u_pred, np.float64) - np.asarray(u_true, np.float64))
    err = np.sqrt((diff**2).sum(axis=0))
    out: dict[str, float] = {}
    for name, mask in regions.items():
        values = err[mask]
        out[f"{prefix}_{name}_mean_mm"] = float(values.mean()) if values.size else float("nan")
        out[f"{prefix}_{name}_p95_mm"] = float(np.percentile(values, 95)) if values.size else float("nan")
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (NaN when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else float("nan")


def tumour_labels(labels: np.ndarray) -> list[int]:
    """Tumour label values present in ``labels``."""
    return [int(v) for v in np.unique(labels) if v >= TUMOUR_BASE]


def warp_mask(labels: np.ndarray, values: tuple[int, ...], u: np.ndarray) -> np.ndarray:
    """Warp the indicator of ``values`` with ``u`` (trilinear) and threshold at 0.5.

    Nearest-neighbour warping of the label map moves every boundary to the voxel grid, an error of up to half a
    voxel diagonal (6.7 mm at 7.74 mm voxels) that can exceed a small true motion; the interpolated indicator keeps
    sub-voxel motion (identical to nearest neighbour away from boundaries).
    """
    return warp_image(np.isin(labels, values).astype(np.float32), u) >= 0.5


def label_dice(labels_moving: np.ndarray, reference: np.ndarray, u: np.ndarray,
               valid: np.ndarray) -> dict[str, float]:
    """dice_organs (mean over organs present), dice_kidneys, dice_tumours (mean over tumours), inside ``valid``:
    each structure of ``labels_moving`` warped with ``u`` (:func:`warp_mask`) against ``reference``."""
    r = np.where(valid, reference, 0)
    organs = {name: dice(warp_mask(labels_moving, labs, u) & valid, np.isin(r, labs))
              for name, labs in ORGANS.items() if np.isin(r, labs).any()}
    tumours = [dice(warp_mask(labels_moving, (k,), u) & valid, r == k) for k in tumour_labels(r)]
    return {"dice_organs": float(np.mean(list(organs.values()))) if organs else float("nan"),
            "dice_kidneys": organs.get("kidneys", float("nan")),
            "dice_tumours": float(np.mean(tumours)) if tumours else float("nan")}


def weighted_centroid(values: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Voxel-coordinate centroid of max(values, 0) inside ``mask`` (None if it has no weight)."""
    w = np.clip(values[mask], 0.0, None).astype(np.float64)
    if w.sum() <= 0:
        return None
    idx = np.argwhere(mask).astype(np.float64)
    return (idx * w[:, None]).sum(axis=0) / w.sum()


def tumour_centroid_errors(warped_spect: np.ndarray, true_activity: np.ndarray, labels_ref: np.ndarray,
                           affine: np.ndarray, valid: np.ndarray | None = None,
                           dilate_mm: float = 8.0) -> list[float]:
    """Per tumour: distance (mm) between the warped SPECT's and the true activity's weighted centroids."""
    a3 = np.asarray(affine, np.float64)[:3, :3]
    spacing = float(np.sqrt((a3**2).sum(axis=0)).min())
    iterations = max(1, round(dilate_mm / spacing))
    errors = []
    for k in tumour_labels(labels_ref):
        region = ndimage.binary_dilation(labels_ref == k, iterations=iterations)
        if valid is not None:
            region &= valid
        c_pred = weighted_centroid(warped_spect, region)
        c_true = weighted_centroid(true_activity, region)
        if c_pred is not None and c_true is not None:
            errors.append(float(np.linalg.norm(a3 @ (c_pred - c_true))))
    return errors


def regions_of(labels_ref: np.ndarray) -> dict[str, np.ndarray]:
    """The evaluation regions: body, kidneys, tumours."""
    return {"body": labels_ref > 0, "kidneys": np.isin(labels_ref, KIDNEYS), "tumours": labels_ref >= TUMOUR_BASE}


def load_pair_truth(patient_dir: str | Path, reference_id: str, moving_id: str,
                    moving_spect: str | Path | None = None) -> PairTruth:
    """Read the truth of the pair (reference -> moving) of a phantom patient folder."""
    folder = Path(patient_dir)
    truth = folder / "truth"
    u_spect, affine = load_field(truth / f"field_spect_{moving_id}.nii.gz")
    u_ct_pair = None
    ct_ref, ct_mov = truth / f"field_ct_{reference_id}.nii.gz", truth / f"field_ct_{moving_id}.nii.gz"
    if ct_ref.is_file() and ct_mov.is_file():
        u_ct_pair = true_ct_pair_field(load_field(ct_ref)[0], load_field(ct_mov)[0])
    labels_ref = read_array(truth / "labels_ref.nii.gz", dtype=np.uint8)[0]
    labels_moving = read_array(truth / f"labels_{moving_id}.nii.gz", dtype=np.uint8)[0]
    activity = read_array(truth / f"activity_{moving_id}.nii.gz")[0]
    spect = read_array(moving_spect or folder / f"spect_{moving_id}.nii.gz")[0]
    return PairTruth(u_spect=u_spect, u_ct_pair=u_ct_pair, labels_ref=labels_ref, labels_moving=labels_moving,
                     activity_moving=activity, moving_spect=spect, affine=affine)


def ground_truth_metrics(field: np.ndarray, field_affine: np.ndarray, truth: PairTruth,
                         dilate_mm: float = 8.0) -> dict[str, float]:
    """All ground-truth measures of a network-grid field (see the module docstring)."""
    shape = truth.labels_ref.shape
    u_ref, inside = resample_field(field, field_affine, shape, truth.affine)
    regions = {k: v & inside for k, v in regions_of(truth.labels_ref).items()}
    out = error_stats(u_ref, truth.u_spect, truth.affine, regions)
    if truth.u_ct_pair is not None:
        out.update(error_stats(u_ref, truth.u_ct_pair, truth.affine, {"body": regions["body"]}, prefix="ct_err"))
    out.update(label_dice(truth.labels_moving, truth.labels_ref, u_ref, inside))
    warped_spect = warp_image(truth.moving_spect, u_ref)
    errors = tumour_centroid_errors(warped_spect, truth.activity_moving, truth.labels_ref, truth.affine, inside,
                                    dilate_mm)
    out["tumour_centroid_mm"] = float(np.mean(errors)) if errors else float("nan")
    body = truth.labels_ref > 0
    out["gt_coverage"] = float(inside[body].mean()) if body.any() else float("nan")
    return out

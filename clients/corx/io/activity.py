"""Checks of input activity images (SPECT, Bq/mL) as they are read: non-finite values, negative voxels."""

from __future__ import annotations

import numpy as np

from ..errors import CorxError

#: A SPECT whose most negative voxel is below -NEGATIVE_REFUSE_FRACTION x its maximum is refused; smaller negatives
#: (conjugate-gradient and other unconstrained reconstructions produce them) are set to 0 with a warning.
NEGATIVE_REFUSE_FRACTION = 0.05


def clip_small_negatives(frame: np.ndarray, where: object,
                         refuse_fraction: float = NEGATIVE_REFUSE_FRACTION) -> tuple[np.ndarray, str | None]:
    """(``frame`` with its negative voxels set to 0, a warning naming how many and the minimum, or None).

    Refuses (CorxError naming ``where``) non-finite values and negatives below ``-refuse_fraction`` x the
    frame's maximum: those are not reconstruction noise. ``frame`` itself is never modified.
    """
    finite = np.isfinite(frame)
    if not finite.all():
        raise CorxError(f"{where}: {int(frame.size - finite.sum())} non-finite activity values (NaN/inf)")
    lo, hi = float(frame.min()), float(frame.max())
    if lo >= 0:
        return frame, None
    if hi <= 0 or lo < -refuse_fraction * hi:
        n_bad = int((frame < -refuse_fraction * max(hi, 0.0)).sum())
        raise CorxError(f"{where}: {n_bad} voxels below -{refuse_fraction:.0%} of the maximum ({hi:.4g}), minimum "
                        f"{lo:.4g} Bq/mL; activity must be >= 0 (small negatives from the reconstruction are "
                        "accepted and set to 0)")
    negative = frame < 0
    n_neg = int(negative.sum())
    clipped = np.where(negative, np.zeros((), frame.dtype), frame)
    return clipped, (f"{where}: {n_neg} negative voxels ({n_neg / frame.size:.2%}; minimum {lo:.4g} Bq/mL, "
                     f"{-lo / hi:.2%} of the maximum) set to 0")

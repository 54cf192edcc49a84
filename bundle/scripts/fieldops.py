"""Displacement-field arithmetic in numpy (no torch), shared by the bundle's metrics and the corx clients.

Fields are channel-first (3, X, Y, Z) in voxels, array-axis order, pull-back: warped(p) = moving(p + u(p)).
"""

from __future__ import annotations

import numpy as np


def jacobian_determinant(field: np.ndarray) -> np.ndarray:
    """det(I + grad u) of the map p -> p + u(p), for ``field`` (3, X, Y, Z) in voxels; float32.

    Central differences inside, one-sided at the borders (numpy.gradient), in float32 (the displacement
    itself is float32). Values <= 0 mark folding.
    """
    u = np.asarray(field, dtype=np.float32)
    if u.ndim != 4 or u.shape[0] != 3:
        raise ValueError(f"expected a (3, X, Y, Z) field, got shape {u.shape}")
    j = [list(np.gradient(u[c])) for c in range(3)]  # j[c][a] = d u_c / d x_a, then + identity
    for c in range(3):
        j[c][c] += np.float32(1.0)
    minor = j[1][1] * j[2][2]
    minor -= j[1][2] * j[2][1]
    det = j[0][0] * minor
    np.multiply(j[1][0], j[2][2], out=minor)
    minor -= j[1][2] * j[2][0]
    det -= j[0][1] * minor
    np.multiply(j[1][0], j[2][1], out=minor)
    minor -= j[1][1] * j[2][0]
    det += j[0][2] * minor
    return det


def nonpositive_jacobian_percent(field: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Percentage of voxels (inside ``mask`` if given) whose Jacobian determinant is <= 0."""
    det = jacobian_determinant(field)
    values = det[mask.astype(bool)] if mask is not None else det
    return 100.0 * float(np.mean(values <= 0)) if values.size else 0.0


def field_to_mm(field: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World-space (mm) displacement vectors (3, X, Y, Z) of a voxel-unit field on the grid ``affine``."""
    return np.einsum("ij,j...->i...", np.asarray(affine, dtype=np.float64)[:3, :3], field)


def integrate_velocity(velocity: np.ndarray, steps: int) -> np.ndarray:
    """Displacement field of a stationary velocity field by scaling and squaring (numpy twin of MONAI ``DVF2DDF``).

    ``velocity`` (3, X, Y, Z) or (B, 3, X, Y, Z) in voxels; ``u = v / 2**steps``, then ``steps`` times
    ``u <- u + u(p + u(p))`` with trilinear sampling and border padding (``DVF2DDF(steps, "bilinear", "border")``,
    which the bundle's :class:`scripts.inferers.FieldInferer` uses). ``steps=0`` returns the input as a displacement.
    """
    v = np.asarray(velocity, dtype=np.float32)
    if v.ndim == 5:
        return np.stack([integrate_velocity(item, steps) for item in v])
    if v.ndim != 4 or v.shape[0] != 3:
        raise ValueError(f"expected a (3, X, Y, Z) or (B, 3, X, Y, Z) velocity field, got shape {v.shape}")
    if steps < 0:
        raise ValueError(f"integration steps must be >= 0, got {steps}")
    from scipy import ndimage

    u = v * np.float32(1.0 / 2**steps)
    identity = np.indices(v.shape[1:], dtype=np.float32)
    for _ in range(steps):
        coords = identity + u
        u = u + np.stack([ndimage.map_coordinates(u[c], coords, order=1, mode="nearest", prefilter=False)
                          for c in range(3)])
    return u

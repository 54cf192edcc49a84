"""Patient motion between and within time points: explicit forward maps, numerically inverted.

For a time point t and a reference point x (world mm, reference SPECT frame):
  SPECT frame:  b_t(x) = R_t (x + D_t(x) - c) + c + d_t        (rigid repositioning + smooth deformation)
  CT frame:     c_t(b_t(x)) with c_t(y) = y + s_t(y)             (CT/SPECT mismatch within the time point)
b_t is the identity for the reference time point; s_t is not. D_t and s_t are sums of Gaussian bumps with
max |grad| <= MAX_GRADIENT, so every map is a diffeomorphism and x + D(x) = z is solved by fixed-point iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import Lattice

MAX_GRADIENT = 0.3  # Frobenius norm bound of grad D and grad s (det(I + grad) >= 0.7**3 > 0)
MAX_ROTATION_DEG = 3.0
MAX_TRANSLATION_MM = 10.0
MAX_DEFORMATION_MM = 10.0
MAX_MISMATCH_MM = 8.0


@dataclass(frozen=True)
class SmoothField:
    """v(x) = const + sum_k amps[k] * exp(-0.5 * |(x - centers[k]) / sigmas[k]|^2), world mm."""

    centers: np.ndarray  # (K, 3)
    sigmas: np.ndarray  # (K, 3)
    amps: np.ndarray  # (K, 3)
    const: np.ndarray  # (3,)

    @classmethod
    def zero(cls) -> SmoothField:
        e = np.zeros((0, 3))
        return cls(e, np.ones((0, 3)), e, np.zeros(3))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.broadcast_to(self.const, x.shape).copy()
        if len(self.centers) == 0:
            return out
        d2 = np.zeros((x.shape[0], len(self.centers)))
        for a in range(3):
            t = (x[:, a : a + 1] - self.centers[None, :, a]) * (1.0 / self.sigmas[None, :, a])
            d2 += t * t
        d2 *= -0.5
        out += np.exp(d2, out=d2) @ self.amps
        return out

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """d v_i / d x_j at the points, shape (N, 3, 3)."""
        jac = np.zeros((x.shape[0], 3, 3))
        for c, s, a in zip(self.centers, self.sigmas, self.amps, strict=True):
            r = (x - c) / s
            g = np.exp(-0.5 * (r**2).sum(axis=1))
            jac -= (g[:, None, None] * a[None, :, None]) * (r / s)[:, None, :]
        return jac

    def scaled(self, bumps: float, const: float = 1.0) -> SmoothField:
        return SmoothField(self.centers, self.sigmas, self.amps * bumps, self.const * const)

    def plus(self, other: SmoothField) -> SmoothField:
        return SmoothField(np.concatenate([self.centers, other.centers]),
                           np.concatenate([self.sigmas, other.sigmas]),
                           np.concatenate([self.amps, other.amps]), self.const + other.const)


def solve_fixed_point(z: np.ndarray, field: SmoothField, tol: float = 1e-4, max_iter: int = 50) -> np.ndarray:
    """x with x + field(x) = z (converges because |grad field| < 1)."""
    x = z - field(z)
    for _ in range(max_iter):
        x_new = z - field(x)
        change = np.abs(x_new - x).max() if x.size else 0.0
        x = x_new
        if change < tol:
            break
    return x


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation R = Rz Ry Rx for small angles (degrees) about the world axes."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class TimeMotion:
    """The maps of one time point (see the module docstring)."""

    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,) mm
    center: np.ndarray  # (3,) mm, centre of rotation
    deform: SmoothField  # D_t, reference coordinates
    mismatch: SmoothField  # s_t, time point coordinates

    def forward_spect(self, x: np.ndarray) -> np.ndarray:
        return (x + self.deform(x) - self.center) @ self.rotation.T + self.center + self.translation

    def forward_ct(self, x: np.ndarray) -> np.ndarray:
        y = self.forward_spect(x)
        return y + self.mismatch(y)

    def inverse_spect(self, y: np.ndarray) -> np.ndarray:
        z = (y - self.center - self.translation) @ self.rotation + self.center
        return solve_fixed_point(z, self.deform)

    def inverse_ct(self, w: np.ndarray) -> np.ndarray:
        return self.inverse_spect(solve_fixed_point(w, self.mismatch))

    def lattice_displacements(self, lattice: Lattice) -> dict[str, np.ndarray]:
        """Forward and inverse displacements (mm) at the lattice nodes, each (3, *lattice.shape)."""
        p = lattice.nodes()
        maps = {"fwd_spect": self.forward_spect, "fwd_ct": self.forward_ct,
                "inv_spect": self.inverse_spect, "inv_ct": self.inverse_ct}
        return {k: (f(p) - p).T.reshape(3, *lattice.shape) for k, f in maps.items()}

    def describe(self, nodes: np.ndarray) -> dict[str, Any]:
        """JSON summary (amplitudes measured at the given points, e.g. inside the body)."""
        cos = np.clip((np.trace(self.rotation) - 1) / 2, -1, 1)
        return {
            "rotation_deg": round(float(np.degrees(np.arccos(cos))), 3),
            "translation_mm": [round(float(v), 3) for v in self.translation],
            "deformation_max_mm": round(float(np.linalg.norm(self.deform(nodes), axis=1).max()), 3),
            "ct_spect_mismatch_max_mm": round(float(np.linalg.norm(self.mismatch(nodes), axis=1).max()), 3),
        }


@dataclass(frozen=True)
class BodyFrame:
    """What motion needs to know of the anatomy (world mm, reference frame)."""

    center: np.ndarray  # body centre
    half_extent: np.ndarray  # half sizes of the body box (x, y) and of the imaged z range
    diaphragm_z: float  # world z of the diaphragm domes (breathing motion is largest around it)


def _random_bumps(rng: np.random.Generator, body: BodyFrame, n: int) -> SmoothField:
    centers = body.center + rng.uniform(-0.8, 0.8, (n, 3)) * body.half_extent
    sigmas = rng.uniform(45.0, 95.0, (n, 3))
    amps = rng.normal(0.0, 1.0, (n, 3))
    return SmoothField(centers, sigmas, amps, np.zeros(3))


def _breathing(rng: np.random.Generator, body: BodyFrame, amplitude: float) -> SmoothField:
    """Cranio-caudal (plus some antero-posterior) displacement peaking just below the diaphragm."""
    sign = rng.choice([-1.0, 1.0])
    center = np.array([body.center[0] + rng.uniform(-20, 20), body.center[1] + rng.uniform(-20, 20),
                       body.diaphragm_z - rng.uniform(10, 50)])
    sigma = np.array([rng.uniform(150, 220), rng.uniform(120, 170), rng.uniform(80, 110)])
    amp = sign * amplitude * np.array([rng.uniform(-0.1, 0.1), rng.uniform(0.15, 0.35), 1.0])
    return SmoothField(center[None], sigma[None], amp[None], np.zeros(3))


def _limit(field: SmoothField, probe: np.ndarray, target_max: float, hard_max: float) -> SmoothField:
    """Scale the bumps to a maximum amplitude ``target_max`` (mm) at the probe points, then enforce the
    gradient bound and ``hard_max`` on the total (bumps + constant)."""
    bumps = SmoothField(field.centers, field.sigmas, field.amps, np.zeros(3))
    peak = np.linalg.norm(bumps(probe), axis=1).max()
    f = field.scaled(target_max / peak if peak > 0 else 0.0)
    grad = np.linalg.norm(f.jacobian(probe), axis=(1, 2)).max()
    if grad > MAX_GRADIENT:
        f = f.scaled(MAX_GRADIENT / grad)
    total = np.linalg.norm(f(probe), axis=1).max()
    if total > hard_max:
        f = f.scaled(hard_max / total, hard_max / total)
    return f


def probe_points(body: BodyFrame, step: float = 20.0) -> np.ndarray:
    """A regular set of points covering the body box (used to measure amplitudes and gradients)."""
    lo, hi = body.center - body.half_extent - 40.0, body.center + body.half_extent + 40.0
    axes = [np.arange(lo[a], hi[a] + step, step) for a in range(3)]
    g = np.meshgrid(*axes, indexing="ij")
    return np.stack([x.ravel() for x in g], axis=1)


def draw_motion(rng: np.random.Generator, body: BodyFrame, timepoint_ids: tuple[str, ...],
                reference: str) -> dict[str, TimeMotion]:
    """Random motion for every time point (parameters drawn for all ids, in order, for reproducibility)."""
    probe = probe_points(body)
    out = {}
    for tid in timepoint_ids:
        # body motion relative to the reference
        angles = rng.normal(0.0, 1.0, 3) * np.array([0.6, 0.6, 1.0])
        angles *= rng.uniform(0.5, MAX_ROTATION_DEG) / max(np.linalg.norm(angles), 1e-9)
        direction = rng.normal(size=3)
        translation = direction / np.linalg.norm(direction) * rng.uniform(2.0, MAX_TRANSLATION_MM)
        deform = _breathing(rng, body, 1.0).scaled(rng.uniform(3.0, 8.0))
        deform = deform.plus(_random_bumps(rng, body, 6).scaled(rng.uniform(1.0, 3.0) / 3.0))
        deform_target = rng.uniform(5.0, MAX_DEFORMATION_MM)
        # CT/SPECT mismatch inside the time point: breathing phase + small shift + local bumps
        shift = rng.normal(size=3)
        shift *= rng.uniform(0.0, 2.5) / np.linalg.norm(shift)
        mismatch = _breathing(rng, body, 1.0).plus(_random_bumps(rng, body, 3).scaled(0.15))
        mismatch_target = rng.uniform(2.0, 6.0)
        mismatch = SmoothField(mismatch.centers, mismatch.sigmas, mismatch.amps, shift)
        mismatch = _limit(mismatch, probe, mismatch_target, MAX_MISMATCH_MM)
        if tid == reference:
            out[tid] = TimeMotion(np.eye(3), np.zeros(3), body.center.copy(), SmoothField.zero(), mismatch)
        else:
            deform = _limit(deform, probe, deform_target, MAX_DEFORMATION_MM)
            out[tid] = TimeMotion(rotation_matrix(angles), translation, body.center.copy(), deform, mismatch)
    return out

"""177Lu dose voxel kernel (DVK) in water: voxel S values in mGy/(MBq s), source voxel at the array centre.

S(o) is the mean absorbed dose in the voxel at offset ``o`` (voxels) per decay in the source voxel, the point
kernel K(r) averaged over a source point and a target point uniform in their voxels: S(o) = E[K(|x_t - x_s|)].
Each component of d = x_t - x_s has a triangular density on o_i h_i + [-h_i, h_i] (h_i the voxel size), so

* near offsets (where d can come within :data:`ELECTRON_CUTOFF_Y` / nu of 0) are integrated in spherical
  coordinates, S = int K(r) r^2 g(r) dr with g(r) the integral of the density of d over the sphere of radius r
  (composite Gauss-Legendre in r, a Fibonacci lattice on the sphere): K r^2 is finite, so the 1/r^2 singularity
  of the point kernels needs no special care;
* far offsets (photons only) use a tensor Gauss rule on the three triangular densities.

Electrons (betas, conversion and Auger electrons, :data:`corx.dosimetry.physics.LU177_ELECTRON_MEV` = 0.14792 MeV per
decay, ICRP 107): Loevinger's empirical beta point-source function for soft tissue (R. Loevinger, "The dosimetry
of beta sources in tissue: the point-source function", Radiology 66 (1956) 55; also in Hine & Brownell,
Radiation Dosimetry, 1956),

    K(r) = E nu^3 / (4 pi N) F(nu r) / (nu r)^2,
    F(y) = c [1 - (y / c) exp(1 - y / c)] + y exp(1 - y)  (y < c),   F(y) = y exp(1 - y)  (y >= c),
    N = 3 c^2 - (c^2 - 1) e  (so that the kernel integrates to E),

with nu = 18.6 (E0 - 0.036)^-1.37 (2 - Eavg / Eavg*) cm^2/g and c = 2 (0.17 < E0 < 0.5 MeV) for the 177Lu beta
maximum energy E0 = 0.498 MeV, taking Eavg / Eavg* = 1 (allowed spectrum shape): nu = 53.6 cm^2/g. The
conversion electrons (47-200 keV) and Auger electrons (a few keV), 0.0146 MeV per decay, get the same kernel:
the whole electron energy is spread with it, so the kernel conserves the energy that local deposition (LED)
deposits. Lanconelli et al. 2012's 177Lu values hold the beta energy only (their 3x3x3 neighbourhood at 4.8 mm
holds 0.133 MeV of electron energy): compare with ``electron_mev=LU177_BETA_MEAN_MEV``.

Photons: the lines of :data:`PHOTON_LINES` (ENSDF/NNDC 177Lu decay data; 0.0333 MeV per decay of ICRP 107's
0.0351 MeV, the rest, L x-rays and weaker lines, is left out), each a point source in water,

    K(r) = E y (mu_en / rho) exp(-mu r) B(mu r) / (4 pi r^2),    B(x) = 1 + (mu / mu_en - 1) x,

mu / rho and mu_en / rho of liquid water from Hubbell & Seltzer (NIST XCOM / NISTIR 5632, 1995), log-log
interpolated. The build-up factor is taken linear in the number of mean free paths, its slope fixed by energy
conservation (in an infinite medium int 4 pi r^2 K dr = E y exactly). A linear form likely overestimates the
build-up within the first mean free path: the photon-dominated corner neighbour is ~18 % above Lanconelli 2012.

Water density 1 g/mL throughout; the dose in another medium is density-scaled by the caller (corx.dosimetry.dose).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import CorxError
from .physics import LU177_ELECTRON_MEV

#: 177Lu beta maximum (main branch) and mean beta energy, MeV (ICRP 107).
LU177_BETA_EMAX_MEV = 0.498
LU177_BETA_MEAN_MEV = 0.1333
#: Loevinger's c parameter for 0.17 < E0 < 0.5 MeV (soft tissue).
LOEVINGER_C = 2.0
#: Beyond nu r = 20 the Loevinger kernel holds 3e-8 of the electron energy: electron dose is cut there.
ELECTRON_CUTOFF_Y = 20.0

#: 177Lu photons (MeV, yield per decay): 113 and 208 keV gammas, weak gammas, Hf K x-rays (Ka2, Ka1, Kb1+3,
#: Kb2), ENSDF/NNDC decay data, rounded.
PHOTON_LINES: tuple[tuple[float, float], ...] = (
    (0.11295, 0.0623), (0.20837, 0.1041), (0.07164, 0.00173), (0.13672, 0.00047), (0.24967, 0.00201),
    (0.32132, 0.00216), (0.05461, 0.0164), (0.05579, 0.0287), (0.06317, 0.0089), (0.06494, 0.0020),
)

#: Liquid water, Hubbell & Seltzer (NISTIR 5632): energy (MeV), mu/rho and mu_en/rho (cm^2/g).
WATER_ENERGY_MEV = (0.04, 0.05, 0.06, 0.08, 0.10, 0.15, 0.20, 0.30, 0.40)
WATER_MU = (0.2683, 0.2269, 0.2059, 0.1837, 0.1707, 0.1505, 0.1370, 0.1186, 0.1061)
WATER_MU_EN = (0.06947, 0.04223, 0.03190, 0.02597, 0.02546, 0.02764, 0.02967, 0.03192, 0.03279)

#: MeV/g per decay -> mGy/(MBq s): 1.602e-13 J/MeV * 1e3 g/kg * 1e6 decays/(MBq s) * 1e3 mGy/Gy.
MGY_PER_MEV_PER_G = 1.602176634e-13 * 1e3 * 1e6 * 1e3
DEFAULT_RADIUS_MM = 25.0

_GL_NODES = 8        # Gauss-Legendre nodes per radial panel
_TENSOR_NODES = 4    # Gauss-Legendre nodes per half of a triangular density (far offsets)
_SPHERE_POINTS = 1024


@dataclass(frozen=True)
class KernelEnergy:
    """Energy a kernel absorbs per decay (sum over voxels of S x voxel mass), MeV, against what is emitted."""

    electron_mev: float
    photon_mev: float
    electron_emitted_mev: float
    photon_emitted_mev: float

    @property
    def total_mev(self) -> float:
        """Electron plus photon energy absorbed within the kernel."""
        return self.electron_mev + self.photon_mev

    @property
    def electron_fraction(self) -> float:
        """Absorbed / emitted electron energy (1 when the kernel is larger than the electron range)."""
        return self.electron_mev / self.electron_emitted_mev

    @property
    def photon_fraction(self) -> float:
        """Absorbed photon fraction within the kernel extent."""
        return self.photon_mev / self.photon_emitted_mev


def loevinger_nu(e_max_mev: float = LU177_BETA_EMAX_MEV, mean_ratio: float = 1.0) -> float:
    """Loevinger's apparent absorption coefficient (cm^2/g) in soft tissue for beta maximum energy E0 (MeV)."""
    return 18.6 * (e_max_mev - 0.036) ** -1.37 * (2.0 - mean_ratio)


def electron_point_kernel(r_cm: np.ndarray, electron_mev: float = LU177_ELECTRON_MEV) -> np.ndarray:
    """Electron energy per unit mass (MeV/g per decay) at ``r_cm`` from a point source in water (Loevinger)."""
    nu, c = loevinger_nu(), LOEVINGER_C
    y = nu * np.asarray(r_cm, dtype=np.float64)
    norm = 3.0 * c * c - (c * c - 1.0) * math.e
    with np.errstate(divide="ignore", invalid="ignore"):
        f = y * np.exp(1.0 - y) + np.where(y < c, c - y * np.exp(1.0 - y / c), 0.0)
        k = electron_mev * nu**3 / (4.0 * math.pi * norm) * f / (y * y)
    return np.where(y < ELECTRON_CUTOFF_Y, k, 0.0)


def _water_coefficients(energy_mev: float) -> tuple[float, float]:
    """mu/rho and mu_en/rho (cm^2/g) of water at ``energy_mev``, log-log interpolated."""
    log_e = np.log(WATER_ENERGY_MEV)
    mu = float(np.exp(np.interp(np.log(energy_mev), log_e, np.log(WATER_MU))))
    mu_en = float(np.exp(np.interp(np.log(energy_mev), log_e, np.log(WATER_MU_EN))))
    return mu, mu_en


def photon_point_kernel(r_cm: np.ndarray) -> np.ndarray:
    """Photon energy absorbed per unit mass (MeV/g per decay) at ``r_cm`` from a point source in water."""
    r = np.asarray(r_cm, dtype=np.float64)
    out = np.zeros_like(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        for energy, yield_ in PHOTON_LINES:
            mu, mu_en = _water_coefficients(energy)
            x = mu * r
            out += energy * yield_ * mu_en * np.exp(-x) * (1.0 + (mu / mu_en - 1.0) * x) / (4.0 * math.pi * r * r)
    return out


def photon_emitted_mev() -> float:
    """Photon energy emitted per decay by the modelled lines, MeV (ICRP 107 total: 0.0351)."""
    return sum(e * y for e, y in PHOTON_LINES)


def parse_voxel_mm(voxel_mm: float | str | Sequence[float]) -> tuple[float, float, float]:
    """Voxel size (mm) per array axis from one number, 'a,b,c' or a sequence of three; all > 0."""
    if isinstance(voxel_mm, str):
        parts: Sequence[float | str] = [p for p in voxel_mm.replace("x", ",").split(",") if p.strip()]
    elif isinstance(voxel_mm, (int, float)):
        parts = [voxel_mm]
    else:
        parts = list(voxel_mm)
    try:
        sizes = [float(p) for p in parts]
    except (TypeError, ValueError) as exc:
        raise CorxError(f"voxel size {voxel_mm!r}: not a number or three comma-separated numbers") from exc
    if len(sizes) == 1:
        sizes *= 3
    if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise CorxError(f"voxel size {voxel_mm!r}: expected one or three positive sizes in mm")
    return sizes[0], sizes[1], sizes[2]


def kernel_half_width(voxel_mm: Sequence[float], radius_mm: float) -> tuple[int, int, int]:
    """Kernel half-width per axis (voxels): the kernel spans at least ``radius_mm`` from the source voxel centre."""
    if not (math.isfinite(radius_mm) and radius_mm >= 0):
        raise CorxError(f"kernel radius must be >= 0 mm, got {radius_mm}")
    n = [math.ceil(radius_mm / h - 1e-9) for h in voxel_mm]
    return n[0], n[1], n[2]


def _gauss_legendre(a: float, b: float, panels: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre nodes and weights on [a, b]."""
    x, w = np.polynomial.legendre.leggauss(_GL_NODES)
    edges = np.linspace(a, b, panels + 1)
    half = np.diff(edges)[:, None] / 2.0
    nodes = (edges[:-1, None] + half * (x[None, :] + 1.0)).ravel()
    return nodes, (half * w[None, :]).ravel()


def _radial_nodes(r_min: float, r_max: float, h_min: float, nu: float) -> tuple[np.ndarray, np.ndarray]:
    """Radial rule on [r_min, r_max] (cm): panels of ~1/nu where electrons matter, ~h/4 beyond, break at c/nu."""
    r_e = ELECTRON_CUTOFF_Y / nu
    breaks = sorted({r_min, r_max, *(b for b in (LOEVINGER_C / nu, r_e) if r_min < b < r_max)})
    nodes, weights = [], []
    for a, b in itertools.pairwise(breaks):
        width = 1.0 / nu if a < r_e else h_min / 4.0
        n, w = _gauss_legendre(a, b, max(1, math.ceil((b - a) / width)))
        nodes.append(n)
        weights.append(w)
    return np.concatenate(nodes), np.concatenate(weights)


def _sphere_points(n: int = _SPHERE_POINTS) -> np.ndarray:
    """Deterministic, nearly uniform unit vectors (Fibonacci lattice), shape (n, 3)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * k
    s = np.sqrt(1.0 - z * z)
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)


def _triangle_density(d: np.ndarray, centre: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Density of x_t - x_s (product of per-axis triangles of half-width h around ``centre``) at points ``d``."""
    t = np.clip(1.0 - np.abs(d - centre) / h, 0.0, None) / h
    return t[..., 0] * t[..., 1] * t[..., 2]


def _near_offset(offset: np.ndarray, h: np.ndarray, dirs: np.ndarray) -> tuple[float, float]:
    """(electron, photon) S of one offset (MeV/g per decay) by the spherical rule; lengths in cm."""
    centre = offset * h
    r_min = float(np.linalg.norm(np.clip(np.abs(centre) - h, 0.0, None)))
    r_max = float(np.linalg.norm(np.abs(centre) + h))
    r, w = _radial_nodes(r_min, r_max, float(h.min()), loevinger_nu())
    g = _triangle_density(r[:, None, None] * dirs[None], centre, h).mean(axis=1) * 4.0 * math.pi
    weight = w * r * r * g
    return float(weight @ electron_point_kernel(r, 1.0)), float(weight @ photon_point_kernel(r))


def _far_offsets(offsets: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Photon S (MeV/g per decay) of offsets far from the source (tensor Gauss rule), one per row of ``offsets``."""
    x, w = np.polynomial.legendre.leggauss(_TENSOR_NODES)
    s = (x + 1.0) / 2.0
    ws = w / 2.0 * (1.0 - s)
    s1, w1 = np.concatenate([-s, s]), np.concatenate([ws, ws])  # triangle on [-1, 1], weights sum to 1
    grid = np.stack(np.meshgrid(s1, s1, s1, indexing="ij"), axis=-1).reshape(-1, 3)
    wgrid = np.einsum("i,j,k->ijk", w1, w1, w1).ravel()
    out = np.empty(len(offsets))
    for start in range(0, len(offsets), 256):
        block = offsets[start:start + 256]
        d = (block[:, None, :] + grid[None]) * h
        out[start:start + 256] = photon_point_kernel(np.linalg.norm(d, axis=-1)) @ wgrid
    return out


@lru_cache(maxsize=16)
def _octant(voxel_mm: tuple[float, float, float], radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(electron, photon) S in mGy/(MBq s) with 1 MeV electron energy, on offsets 0..n per axis (one octant)."""
    h = np.asarray(voxel_mm) / 10.0  # cm
    n = kernel_half_width(voxel_mm, radius_mm)
    idx = np.stack(np.meshgrid(*(np.arange(k + 1) for k in n), indexing="ij"), axis=-1).reshape(-1, 3)
    r_min = np.linalg.norm(np.clip(idx - 1, 0, None) * h, axis=1)
    near = r_min < ELECTRON_CUTOFF_Y / loevinger_nu()
    elec = np.zeros(len(idx))
    phot = np.zeros(len(idx))
    dirs = _sphere_points()
    for i in np.flatnonzero(near):
        elec[i], phot[i] = _near_offset(idx[i].astype(float), h, dirs)
    far = np.flatnonzero(~near)
    if far.size:
        phot[far] = _far_offsets(idx[far].astype(float), h)
    shape = tuple(k + 1 for k in n)
    return (_symmetrise(elec.reshape(shape), voxel_mm) * MGY_PER_MEV_PER_G,
            _symmetrise(phot.reshape(shape), voxel_mm) * MGY_PER_MEV_PER_G)


def _symmetrise(octant: np.ndarray, voxel_mm: tuple[float, float, float]) -> np.ndarray:
    """Average over the permutations of axes with equal voxel sizes (the sphere rule is not exactly symmetric)."""
    perms = [p for p in itertools.permutations(range(3)) if all(voxel_mm[a] == voxel_mm[b] for a, b in enumerate(p))]
    return np.mean([np.transpose(octant, p) for p in perms], axis=0)


def _unfold(octant: np.ndarray) -> np.ndarray:
    """Full kernel (2n+1 per axis) from its octant (offsets 0..n) by mirror symmetry."""
    full = octant
    for axis in range(3):
        mirrored = np.flip(np.take(full, np.arange(1, full.shape[axis]), axis=axis), axis=axis)
        full = np.concatenate([mirrored, full], axis=axis)
    return full


def kernel_components(voxel_mm: float | str | Sequence[float], radius_mm: float = DEFAULT_RADIUS_MM,
                      electron_mev: float = LU177_ELECTRON_MEV) -> tuple[np.ndarray, np.ndarray]:
    """(electron, photon) voxel S values, mGy/(MBq s), float64, odd shape, source voxel at the centre."""
    size = parse_voxel_mm(voxel_mm)
    elec, phot = _octant(tuple(round(s, 6) for s in size), float(radius_mm))
    return _unfold(elec) * electron_mev, _unfold(phot)


def dose_voxel_kernel(voxel_mm: float | str | Sequence[float], radius_mm: float = DEFAULT_RADIUS_MM,
                      electron_mev: float = LU177_ELECTRON_MEV) -> np.ndarray:
    """177Lu water voxel S values, mGy/(MBq s) (float64), shape 2n+1 per axis, source voxel at the centre.

    Args:
        voxel_mm: voxel size in mm (one number, or three for the array axes).
        radius_mm: the kernel spans at least this distance from the source voxel centre along each axis.
        electron_mev: electron energy per decay spread by the electron kernel (default all electrons,
            0.14792 MeV; 0.1333 MeV for the betas alone).
    """
    elec, phot = kernel_components(voxel_mm, radius_mm, electron_mev)
    return elec + phot


def kernel_energy(voxel_mm: float | str | Sequence[float], radius_mm: float = DEFAULT_RADIUS_MM,
                  electron_mev: float = LU177_ELECTRON_MEV) -> KernelEnergy:
    """Energy the kernel absorbs per decay (sum of S x voxel mass in water), electrons and photons, MeV."""
    size = parse_voxel_mm(voxel_mm)
    mass_g = math.prod(size) / 1000.0
    elec, phot = kernel_components(size, radius_mm, electron_mev)
    to_mev = mass_g / MGY_PER_MEV_PER_G
    return KernelEnergy(electron_mev=float(elec.sum() * to_mev), photon_mev=float(phot.sum() * to_mev),
                        electron_emitted_mev=electron_mev, photon_emitted_mev=photon_emitted_mev())


def kernel_affine(voxel_mm: float | str | Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """Affine diag(voxel size) with the kernel's centre voxel at world (0, 0, 0)."""
    size = np.asarray(parse_voxel_mm(voxel_mm))
    affine = np.diag([*size, 1.0])
    affine[:3, 3] = -size * (np.asarray(shape[:3]) // 2)
    return affine


def named_values(kernel: np.ndarray) -> dict[str, float]:
    """Centre, face, edge and corner neighbour values of a kernel (offsets (0,0,0), (1,0,0), (1,1,0), (1,1,1))."""
    c = np.asarray(kernel.shape) // 2
    picks = {"centre": (0, 0, 0), "face": (1, 0, 0), "edge": (1, 1, 0), "corner": (1, 1, 1)}
    return {name: float(kernel[tuple(c + np.asarray(o))]) for name, o in picks.items() if (c >= np.asarray(o)).all()}


#: Lanconelli et al., Phys Med Biol 57 (2012) 517: 177Lu soft-tissue voxel S values, mGy/(MBq s).
LANCONELLI_2012 = {
    4.8: {"centre": 1.78e-1, "face": 2.46e-3, "edge": 8.65e-5, "corner": 2.35e-5},
    4.0: {"centre": 3.02e-1, "face": 4.98e-3},
}


def kernel_report(voxel_mm: float | str | Sequence[float], kernel: np.ndarray, energy: KernelEnergy) -> list[str]:
    """Console lines: shape, centre/face/edge/corner values and the energy balance of a kernel."""
    from .physics import LU177_PHOTON_MEV

    size = parse_voxel_mm(voxel_mm)
    values = "  ".join(f"{name} {value:.3e}" for name, value in named_values(kernel).items())
    return [
        f"177Lu water kernel {'x'.join(map(str, kernel.shape))}, voxels {' x '.join(f'{s:g}' for s in size)} mm, "
        f"mGy/(MBq s): {values}",
        f"energy absorbed per decay within the kernel: electrons {energy.electron_mev:.5f} MeV of "
        f"{energy.electron_emitted_mev:.5f} ({100 * energy.electron_fraction:.1f} %), photons "
        f"{energy.photon_mev:.5f} MeV of {energy.photon_emitted_mev:.5f} modelled "
        f"({100 * energy.photon_fraction:.1f} %; ICRP 107 photon total {LU177_PHOTON_MEV:.4f}), "
        f"total {energy.total_mev:.5f} MeV",
    ]


def write_kernel(out: str | Path, voxel_mm: float | str | Sequence[float], radius_mm: float = DEFAULT_RADIUS_MM,
                 overwrite: bool = False) -> tuple[Path, list[str]]:
    """Write the kernel as NIfTI (float32, mGy/(MBq s), centred affine); return the path and the report lines."""
    from ..io.imageio import save_image

    out = Path(out)
    if not out.name.endswith((".nii", ".nii.gz")):
        raise CorxError(f"{out}: the kernel is written as NIfTI, give a .nii or .nii.gz name")
    if out.exists() and not overwrite:
        raise CorxError(f"{out}: already exists (use --overwrite to replace it)")
    size = parse_voxel_mm(voxel_mm)
    kernel = dose_voxel_kernel(size, radius_mm)
    save_image(kernel, kernel_affine(size, kernel.shape), out, overwrite=overwrite, dtype=np.float32)
    return out, kernel_report(size, kernel, kernel_energy(size, radius_mm))

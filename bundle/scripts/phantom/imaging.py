"""Image formation: tissue codes looked up at inverse-mapped points, CT in HU, SPECT with PV, PSF and noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy
from .geometry import FieldSampler, Grid, Lattice

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
CHUNK_VOXELS = 2_000_000  # points per lookup chunk (bounds the temporary memory)


def _crop(grid: Grid, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    ranges = grid.index_range(lo, hi)
    return None if any(b <= a for a, b in ranges) else ranges


def lookup_codes(anat: Anatomy, grid: Grid, inverse: np.ndarray | None, lattice: Lattice | None,
                 box: tuple[np.ndarray, np.ndarray],
                 offsets: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 0.0),)) -> list[np.ndarray]:
    """Tissue codes at points of ``grid`` pulled back to the reference frame (nearest anatomy voxel).

    ``inverse`` is the inverse displacement (3, *lattice.shape) in mm (None: identity). Each entry of
    ``offsets`` (voxel units of ``grid``) gives one code volume, sampled at voxel centre + offset, with the
    displacement of the voxel centre (sub-voxel points for partial-volume averages). Only voxels inside the world
    box ``box`` are looked up; the others are air.
    """
    outs = [np.zeros(grid.shape, np.uint8) for _ in offsets]
    ranges = _crop(grid, *box)
    if ranges is None:
        return outs
    sub = grid.crop(ranges)
    ag = anat.grid
    a_shape = anat.codes.shape
    flat_codes = anat.codes.ravel()
    strides = (a_shape[1] * a_shape[2], a_shape[2], 1)
    inv_h = [1.0 / ag.spacing[a] for a in range(3)]
    base = [((sub.coords(a) - ag.origin[a]) * inv_h[a]).astype(np.float32) for a in range(3)]
    axis_offsets = [sorted({o[a] for o in offsets}) for a in range(3)]
    shift = [[np.float32(o * grid.spacing[a] * inv_h[a]) for o in axis_offsets[a]] for a in range(3)]
    pick = [tuple(axis_offsets[a].index(o[a]) for a in range(3)) for o in offsets]
    views = [o[ranges[0][0]:ranges[0][1], ranges[1][0]:ranges[1][1], ranges[2][0]:ranges[2][1]] for o in outs]
    sampler = FieldSampler(inverse, lattice, sub) if inverse is not None else None
    step = max(1, CHUNK_VOXELS // (sub.shape[0] * sub.shape[1])) if sampler else sub.shape[2]
    for k0 in range(0, sub.shape[2], step):
        k1 = min(sub.shape[2], k0 + step)
        d = sampler.chunk(k0, k1) if sampler else None
        ints = []
        for a in range(3):
            shape = [1, 1, 1]
            shape[a] = -1
            b = (base[a] if a < 2 else base[a][k0:k1]).reshape(shape)
            f = b if d is None else d[a] * np.float32(inv_h[a]) + b
            per = []
            for s_ in shift[a]:
                g = f + (s_ + np.float32(0.5))  # floor(x + 0.5) after clipping to [0.5, n - 0.5]: nearest voxel
                np.clip(g, 0.5, a_shape[a] - 0.5, out=g)
                i = g.astype(np.int32)
                if strides[a] != 1:
                    i *= np.int32(strides[a])
                per.append(i)
            ints.append(per)
        for view, (p, q, r) in zip(views, pick, strict=True):
            view[:, :, k0:k1] = flat_codes[ints[0][p] + ints[1][q] + ints[2][r]]
    return outs


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor**3 blocks (partial-volume average of oversampled values), float32."""
    out = values.astype(np.float32, copy=False)
    for axis in range(3):
        sl = [slice(None)] * 3
        parts = []
        for q in range(factor):
            sl[axis] = slice(q, None, factor)
            parts.append(out[tuple(sl)])
        out = parts[0] + parts[1] if factor > 1 else parts[0].copy()
        for p in parts[2:]:
            out += p
    out *= np.float32(1.0 / factor**3)
    return out


class FrameCodes:
    """Codes of a SPECT grid in one frame: at voxel centres (labels) and at factor**3 sub-voxel points (PV)."""

    def __init__(self, anat: Anatomy, grid: Grid, inverse: np.ndarray | None, lattice: Lattice | None,
                 box: tuple[np.ndarray, np.ndarray], factor: int = 2) -> None:
        sub = [(q + 0.5) / factor - 0.5 for q in range(factor)]
        offsets = ((0.0, 0.0, 0.0), *((a, b, c) for a in sub for b in sub for c in sub))
        codes = lookup_codes(anat, grid, inverse, lattice, box, offsets)
        self.center = codes[0]
        # voxels whose sub-points share one code need a single lookup; the mixed ones keep all sub-codes
        self.first = codes[1]
        mixed = np.zeros(grid.shape, bool)
        for c in codes[2:]:
            mixed |= c != self.first
        self.mixed = np.nonzero(mixed.ravel())[0]
        self.mixed_codes = [c.ravel()[self.mixed] for c in codes[1:]]

    def average(self, lut: np.ndarray) -> np.ndarray:
        """Partial-volume average of lut[code] per voxel (float32)."""
        out = lut[self.first]
        acc = lut[self.mixed_codes[0]]
        for c in self.mixed_codes[1:]:
            acc += lut[c]
        acc *= np.float32(1.0 / len(self.mixed_codes))
        out.ravel()[self.mixed] = acc
        return out


def blur(image: np.ndarray, fwhm_mm: float, grid: Grid) -> np.ndarray:
    """Gaussian blur with the given FWHM (mm), zero outside the field of view."""
    if fwhm_mm <= 0:
        return image.astype(np.float32, copy=True)
    sigma = [fwhm_mm * FWHM_TO_SIGMA / abs(s) for s in grid.spacing]
    return ndimage.gaussian_filter(image.astype(np.float32, copy=False), sigma, mode="constant", truncate=3.5)


def spect_image(pv_activity: np.ndarray, grid: Grid, fwhm_mm: float, postfilter_fwhm_mm: float,
                counts_per_bq: float, rng: np.random.Generator) -> np.ndarray:
    """Reconstructed SPECT (Bq/mL, float32): PSF, Poisson counts, post-filter; total resolution ``fwhm_mm``."""
    pre = float(np.sqrt(max(fwhm_mm**2 - postfilter_fwhm_mm**2, 0.0)))
    expected = blur(pv_activity, pre, grid)
    scale = grid.voxel_ml * counts_per_bq  # counts per (Bq/mL)
    np.maximum(expected, 0.0, out=expected)
    counts = rng.poisson(expected.astype(np.float64) * scale).astype(np.float32)
    counts *= np.float32(1.0 / scale)
    return blur(counts, postfilter_fwhm_mm, grid)


def ct_image(codes: np.ndarray, hu_table: np.ndarray, noise_hu: float, rng: np.random.Generator) -> np.ndarray:
    """CT in HU (int16): tissue HU plus white low-dose noise, clipped to [-1024, 3071]; outside the circular
    reconstruction field of view (the disc inscribed in the axial matrix) the value is -1024, as on scanners."""
    hu = hu_table.astype(np.float32)[codes]
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise *= np.float32(noise_hu)
    hu += noise
    np.rint(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
    out = hu.astype(np.int16)
    n0, n1 = codes.shape[:2]
    r0 = (np.arange(n0) - (n0 - 1) / 2.0) / (n0 / 2.0)
    r1 = (np.arange(n1) - (n1 - 1) / 2.0) / (n1 / 2.0)
    out[(r0[:, None] ** 2 + r1[None, :] ** 2) > 1.0] = -1024
    return out

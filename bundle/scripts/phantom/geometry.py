"""Axis-aligned image grids and separable (Catmull-Rom) sampling of smooth lattice fields on them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid: world = origin + spacing * index per axis (spacing may be negative)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @classmethod
    def centered(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                 center: tuple[float, float, float], flip_x: bool = False) -> Grid:
        """A grid whose voxel centres are centred on ``center`` (world mm)."""
        sp = [abs(float(s)) for s in spacing]
        if flip_x:
            sp[0] = -sp[0]
        origin = tuple(float(c) - s * (n - 1) / 2.0 for c, s, n in zip(center, sp, shape, strict=True))
        return cls(tuple(int(n) for n in shape), tuple(sp), origin)

    @property
    def affine(self) -> np.ndarray:
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.prod(self.spacing)) / 1000.0)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def coords(self, axis: int) -> np.ndarray:
        """World coordinates (mm) of the voxel centres along one axis."""
        return self.origin[axis] + self.spacing[axis] * np.arange(self.shape[axis], dtype=np.float64)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World (min, max) of the voxel centres per axis."""
        c = [self.coords(a) for a in range(3)]
        return np.array([x.min() for x in c]), np.array([x.max() for x in c])

    def index_range(self, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[int, int], ...]:
        """Per axis, the [start, stop) voxel range whose centres fall inside the world box [lo, hi]."""
        out = []
        for a in range(3):
            c = self.coords(a)
            inside = np.nonzero((c >= lo[a]) & (c <= hi[a]))[0]
            out.append((int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0))
        return tuple(out)

    def crop(self, ranges: tuple[tuple[int, int], ...]) -> Grid:
        """The sub-grid of the given per-axis [start, stop) ranges."""
        shape = tuple(b - a for a, b in ranges)
        origin = tuple(self.origin[i] + self.spacing[i] * ranges[i][0] for i in range(3))
        return Grid(shape, self.spacing, origin)

    def oversample(self, factor: int) -> Grid:
        """The grid of ``factor**3`` sub-voxel centres per voxel (same field of view)."""
        sp = tuple(s / factor for s in self.spacing)
        origin = tuple(o - s / 2.0 + q / 2.0 for o, s, q in zip(self.origin, self.spacing, sp, strict=True))
        return Grid(tuple(n * factor for n in self.shape), sp, origin)


@dataclass(frozen=True)
class Lattice:
    """A coarse, isotropic, RAS-aligned lattice of nodes (world mm) carrying smooth fields."""

    origin: np.ndarray  # (3,)
    spacing: float
    shape: tuple[int, int, int]

    @classmethod
    def covering(cls, lo: np.ndarray, hi: np.ndarray, spacing: float, margin_nodes: int = 3) -> Lattice:
        """A lattice covering the world box [lo, hi] with ``margin_nodes`` spare nodes on each side."""
        lo = np.asarray(lo, float) - margin_nodes * spacing
        hi = np.asarray(hi, float) + margin_nodes * spacing
        shape = tuple(int(np.ceil((h - l_) / spacing)) + 1 for l_, h in zip(lo, hi, strict=True))
        return cls(lo, float(spacing), shape)

    def nodes(self) -> np.ndarray:
        """World coordinates of all nodes, shape (N, 3), C order over the lattice shape."""
        axes = [self.origin[a] + self.spacing * np.arange(self.shape[a]) for a in range(3)]
        g = np.meshgrid(*axes, indexing="ij")
        return np.stack([x.ravel() for x in g], axis=1)


def catmull_rom_matrix(x: np.ndarray, x0: float, h: float, m: int) -> np.ndarray:
    """Weights (len(x), m) interpolating node values at x0 + h*i (i < m) to the points x (Catmull-Rom)."""
    t = (np.asarray(x, float) - x0) / h
    i = np.floor(t).astype(np.int64)
    f = t - i
    f2, f3 = f * f, f * f * f
    weights = ((-f3 + 2 * f2 - f) / 2, (3 * f3 - 5 * f2 + 2) / 2, (-3 * f3 + 4 * f2 + f) / 2, (f3 - f2) / 2)
    out = np.zeros((t.size, m), np.float64)
    rows = np.arange(t.size)
    for off, w in zip((-1, 0, 1, 2), weights, strict=True):
        np.add.at(out, (rows, np.clip(i + off, 0, m - 1)), w)
    return out


class FieldSampler:
    """Samples a vector field given at lattice nodes on a dense grid, chunk by chunk along the last axis."""

    def __init__(self, values: np.ndarray, lattice: Lattice, grid: Grid) -> None:
        self.grid = grid
        w = [catmull_rom_matrix(grid.coords(a), lattice.origin[a], lattice.spacing, lattice.shape[a])
             for a in range(3)]
        self.w0 = w[0].astype(np.float32)
        # contract axes 2 and 1 now (small), axis 0 per chunk: partial[c] has shape (m0, n1, n2)
        partial = []
        for comp in values.astype(np.float64):
            t = np.tensordot(comp, w[2], axes=(2, 1))  # (m0, m1, n2)
            t = np.tensordot(w[1], t, axes=(1, 1))  # (n1, m0, n2)
            partial.append(np.ascontiguousarray(t.transpose(1, 0, 2), dtype=np.float32))
        self.partial = partial

    def chunk(self, k0: int, k1: int) -> np.ndarray:
        """Field values (3, n0, n1, k1 - k0) on the slices k0..k1-1 of the grid, float32."""
        m0 = self.w0.shape[1]
        n0, n1 = self.grid.shape[0], self.grid.shape[1]
        out = np.empty((3, n0, n1, k1 - k0), np.float32)
        for c, p in enumerate(self.partial):
            sub = np.ascontiguousarray(p[:, :, k0:k1]).reshape(m0, -1)
            out[c] = (self.w0 @ sub).reshape(n0, n1, k1 - k0)
        return out

    def full(self) -> np.ndarray:
        return self.chunk(0, self.grid.shape[2])

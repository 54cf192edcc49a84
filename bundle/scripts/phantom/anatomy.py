"""Randomised patient anatomy painted as tissue codes on a fine reference grid (world mm, RAS).

Body coordinates (mm) are relative to the body centre: x to the patient's right, y anterior, z superior, with
z = 0 near the first lumbar vertebra. Structures are painted in order (later ones win): body fat, muscle wall,
visceral fat, lungs, diaphragm, bowel, pancreas, muscles, organs, vessels and heart, bones, gas, tumours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import Grid
from .motion import BodyFrame, rotation_matrix
from .spec import MAX_TUMOURS
from .tissues import CODE, TUMOUR_HU, TissueTable, build_table, tumour_codes

NOT_FOR_TUMOURS = ("kidney_cortex", "kidney_medulla", "spleen", "urine", "lung", "blood", "cortical_bone")


@dataclass
class Block:
    """A box of the anatomy grid: slices and broadcastable body coordinates (float32)."""

    slices: tuple[slice, slice, slice]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray


@dataclass(frozen=True)
class Tumour:
    """One tumour (body coordinates)."""

    index: int
    site: str
    center: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray
    necrotic_semi_axes: np.ndarray | None
    necrotic_fraction: float  # uptake of the necrotic core relative to the viable tumour

    @property
    def diameter_mm(self) -> float:
        return float(2.0 * np.cbrt(np.prod(self.semi_axes)))


@dataclass
class Anatomy:
    """The painted anatomy of one patient."""

    grid: Grid  # fine reference grid (RAS, isotropic), codes has a one-voxel air border
    codes: np.ndarray  # uint8 tissue codes
    table: TissueTable
    tumours: list[Tumour]
    body: BodyFrame
    params: dict[str, Any] = field(default_factory=dict)

    def volumes_ml(self) -> np.ndarray:
        """Volume (mL) of every code."""
        return np.bincount(self.codes.ravel(), minlength=256).astype(np.float64) * self.grid.voxel_ml


class Painter:
    """Paints shapes into a code volume; every shape is evaluated on its bounding block only."""

    def __init__(self, grid: Grid, center: np.ndarray) -> None:
        self.grid = grid
        self.codes = np.zeros(grid.shape, np.uint8)
        self.axes = [(grid.coords(a) - center[a]).astype(np.float32) for a in range(3)]

    def block(self, lo: np.ndarray, hi: np.ndarray) -> Block | None:
        sl = []
        for a in range(3):
            c = self.axes[a]
            i0 = int(np.searchsorted(c, lo[a], side="left"))
            i1 = int(np.searchsorted(c, hi[a], side="right"))
            i0, i1 = max(i0, 1), min(i1, c.size - 1)  # keep the air border
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        x = self.axes[0][sl[0]][:, None, None]
        y = self.axes[1][sl[1]][None, :, None]
        z = self.axes[2][sl[2]][None, None, :]
        return Block(tuple(sl), x, y, z)

    def paint(self, blk: Block, mask: np.ndarray, code: int, only: tuple[int, ...] | None = None) -> None:
        view = self.codes[blk.slices]
        mask = np.broadcast_to(mask, view.shape)
        if only is not None:
            mask = mask & np.isin(view, only)
        view[mask] = code

    def ellipsoid_q(self, center: np.ndarray, semi: np.ndarray, rot: np.ndarray | None = None,
                    pad: float = 0.0) -> tuple[Block | None, np.ndarray | None]:
        """Block and normalised squared radius q (q <= 1 inside) of an ellipsoid."""
        rot = np.eye(3) if rot is None else rot
        ext = np.abs(rot) @ semi + pad
        blk = self.block(center - ext, center + ext)
        if blk is None:
            return None, None
        d = (blk.x - center[0], blk.y - center[1], blk.z - center[2])
        q = 0.0
        for i in range(3):  # local axis i = column i of rot
            li = d[0] * rot[0, i] + d[1] * rot[1, i] + d[2] * rot[2, i]
            q = q + (li / semi[i]) ** 2
        return blk, q

    def ellipsoid(self, code: int, center: np.ndarray, semi: np.ndarray, rot: np.ndarray | None = None,
                  only: tuple[int, ...] | None = None, extra: Callable[[Block], np.ndarray] | None = None) -> None:
        blk, q = self.ellipsoid_q(np.asarray(center, float), np.asarray(semi, float), rot)
        if blk is None:
            return
        mask = q <= 1.0
        if extra is not None:
            mask = mask & extra(blk)
        self.paint(blk, mask, code, only)

    def capsule_path(self, code: int, points: np.ndarray, radius: np.ndarray | float,
                     only: tuple[int, ...] | None = None, extra: Callable[[Block], np.ndarray] | None = None) -> None:
        """A tube along a polyline (union of spheres every radius/2)."""
        points = np.asarray(points, float)
        radius = np.broadcast_to(np.asarray(radius, float), (len(points),))
        for p0, p1, r0, r1 in zip(points[:-1], points[1:], radius[:-1], radius[1:], strict=True):
            n = max(2, int(np.ceil(np.linalg.norm(p1 - p0) / (0.5 * min(r0, r1)))))
            for s in np.linspace(0.0, 1.0, n):
                r = (1 - s) * r0 + s * r1
                self.ellipsoid(code, (1 - s) * p0 + s * p1, np.array([r, r, r]), None, only, extra)


def _interp(z: np.ndarray, knots: tuple[float, ...], values: tuple[float, ...]) -> np.ndarray:
    return np.interp(z, knots, values).astype(np.float32)


class AnatomyBuilder:
    """Draws the random parameters of one patient and paints the anatomy."""

    Z_KNOTS = (-450.0, -260.0, -150.0, -30.0, 80.0, 200.0, 320.0, 450.0)
    A_FACTOR = (0.95, 1.05, 1.06, 0.96, 1.0, 1.03, 0.98, 0.85)
    B_FACTOR = (0.92, 1.0, 1.0, 0.97, 1.02, 1.03, 0.98, 0.85)

    def __init__(self, rng: np.random.Generator, spacing_mm: float) -> None:
        self.rng = rng
        self.h = spacing_mm
        u = rng.uniform
        self.a0 = 165.0 * u(0.88, 1.12)
        self.b0 = 112.0 * u(0.86, 1.16)
        self.fat = u(8.0, 32.0)
        self.muscle = u(9.0, 15.0)
        self.dome_r = 130.0 + u(-15.0, 15.0)
        self.dome_l = self.dome_r - u(5.0, 20.0)
        self.spine_y0 = -self.b0 + u(70.0, 82.0)

    # ---- body outline -------------------------------------------------------------------------------
    def a(self, z: np.ndarray, shrink: float = 0.0) -> np.ndarray:
        return self.a0 * _interp(z, self.Z_KNOTS, self.A_FACTOR) - shrink

    def b(self, z: np.ndarray, shrink: float = 0.0) -> np.ndarray:
        return self.b0 * _interp(z, self.Z_KNOTS, self.B_FACTOR) - shrink

    def outline_q(self, blk: Block, shrink: float = 0.0) -> np.ndarray:
        """Normalised 'radius' of the body outline shrunk by ``shrink`` mm (flatter posteriorly)."""
        tx = (blk.x / self.a(blk.z, shrink)) ** 2
        yb = blk.y / self.b(blk.z, shrink)
        ty = np.where(blk.y > 0, yb**2, yb**4)
        return tx + ty

    def cavity(self, blk: Block) -> np.ndarray:
        return self.outline_q(blk, self.fat + self.muscle) <= 1.0

    def spine_y(self, z: np.ndarray) -> np.ndarray:
        return self.spine_y0 + _interp(z, (-320.0, -220.0, -100.0, 20.0, 150.0, 260.0, 420.0),
                                       (-15.0, 0.0, 10.0, 4.0, -8.0, -12.0, -4.0))

    def diaphragm(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z of the diaphragm surface (max of two paraboloid domes)."""
        ai = self.a0 - self.fat - self.muscle
        right = self.dome_r - ((x - 0.45 * ai) ** 2 + (y + 10.0) ** 2) / 220.0
        left = self.dome_l - ((x + 0.45 * ai) ** 2 + (y + 10.0) ** 2) / 220.0
        return np.maximum(right, left)

    # ---- build -----------------------------------------------------------------------------------------
    def build(self, center: np.ndarray, z_range: tuple[float, float]) -> Anatomy:
        """Paint the anatomy on a grid covering the body in x, y and ``z_range`` (world mm) in z."""
        rng, h = self.rng, self.h
        amax = self.a0 * max(self.A_FACTOR) + 2 * h
        bmax = self.b0 * max(self.B_FACTOR) + 2 * h
        shape = (int(np.ceil(2 * amax / h)) + 3, int(np.ceil(2 * bmax / h)) + 3,
                 int(np.ceil((z_range[1] - z_range[0]) / h)) + 3)
        zc = 0.5 * (z_range[0] + z_range[1])
        grid = Grid.centered(shape, (h, h, h), (center[0], center[1], zc))
        p = Painter(grid, center)
        self._paint_body(p)
        self._paint_thorax(p)
        self._paint_bowel(p)
        self._paint_muscles(p)
        self._paint_organs(p)
        self._paint_vessels(p)
        self._paint_bones(p)
        self._paint_gas(p)
        tumours = self._paint_tumours(p)
        table = build_table(rng, [(t.site, t.necrotic_fraction) for t in tumours])
        body = BodyFrame(center=np.asarray(center, float),
                         half_extent=np.array([self.a0, self.b0, 0.5 * (z_range[1] - z_range[0]) - 60.0]),
                         diaphragm_z=float(center[2] + self.dome_r))
        params = {"half_width_mm": round(self.a0, 1), "half_depth_mm": round(self.b0, 1),
                  "subcutaneous_fat_mm": round(self.fat, 1), "muscle_wall_mm": round(self.muscle, 1),
                  "body_center_mm": [round(float(c), 2) for c in center]}
        return Anatomy(grid, p.codes, table, tumours, body, params)

    def _slab(self, p: Painter, z0: float, z1: float, margin: float = 0.0) -> Block | None:
        ext = np.array([self.a0 * 1.2 + margin, self.b0 * 1.2 + margin])
        return p.block(np.array([-ext[0], -ext[1], z0]), np.array([ext[0], ext[1], z1]))

    def _paint_body(self, p: Painter) -> None:
        blk = self._slab(p, -1e4, 1e4)
        p.paint(blk, self.outline_q(blk) <= 1.0, CODE["subcutaneous_fat"])
        p.paint(blk, self.outline_q(blk, self.fat) <= 1.0, CODE["muscle"])
        p.paint(blk, self.cavity(blk), CODE["visceral_fat"])

    def _paint_thorax(self, p: Painter) -> None:
        blk = self._slab(p, min(self.dome_r, self.dome_l) - 90.0, 1e4)
        if blk is None:
            return
        zd = self.diaphragm(blk.x, blk.y)
        apex = np.clip(1.0 - ((blk.z - 220.0) / 140.0).clip(0, None) ** 2, 0.0, 1.0)
        lung_q = self.outline_q(blk, self.fat + self.muscle + 6.0)
        sy = self.spine_y(blk.z)
        mediastinum = (np.abs(blk.x + 8.0) < 30.0) & (blk.y > sy - 25.0)
        lungs = (lung_q <= apex) & (blk.z > zd + 6.0) & ~mediastinum & ~((np.abs(blk.x) < 45) & (blk.y < sy + 25))
        p.paint(blk, lungs, CODE["lung"])
        p.paint(blk, self.cavity(blk) & (np.abs(blk.z - zd - 1.0) <= 5.0), CODE["muscle"])

    def _paint_bowel(self, p: Painter) -> None:
        rng, u = self.rng, self.rng.uniform
        ai, bi = self.a0 - self.fat - self.muscle, self.b0 - self.fat - self.muscle
        sy = float(self.spine_y(np.float32(-100.0)))
        bowel = CODE["bowel"]
        soft = (CODE["visceral_fat"],)
        for _ in range(int(rng.integers(12, 20))):  # small bowel loops
            c = np.array([u(-0.5, 0.5) * ai, u(-0.05, 0.65) * bi, u(-175.0, -55.0)])
            r = u(14.0, 24.0)
            p.ellipsoid(bowel, c, np.array([r, r * u(0.7, 1.0), r * u(0.7, 1.3)]), only=soft)
        xr = 0.68 * ai
        colon = np.array([[xr, 0.1 * bi, -160.0], [xr + 3, 0.15 * bi, -40.0], [0.4 * ai, 0.7 * bi, -50.0],
                          [-0.4 * ai, 0.7 * bi, -42.0], [-xr, 0.1 * bi, -25.0], [-xr, 0.0, -140.0],
                          [-0.3 * ai, 0.25 * bi, -180.0], [0.0, sy + 35.0, -200.0], [0.0, sy + 20.0, -300.0]])
        colon[:, :2] += rng.normal(0.0, 5.0, (len(colon), 2))
        radius = np.array([24, 22, 20, 20, 20, 18, 17, 16, 16]) * u(0.85, 1.15)
        p.capsule_path(bowel, colon, radius, only=soft)
        # stomach (left upper quadrant, below the diaphragm)
        c = np.array([-0.38 * ai, 0.25 * bi, self.dome_l - 50.0 + u(-10, 10)])
        self.stomach = (c, np.array([40.0, 32.0, 52.0]) * u(0.8, 1.15), rotation_matrix(np.array([0, 25.0, 20.0])))
        p.ellipsoid(bowel, *self.stomach, extra=lambda b: b.z < self.diaphragm(b.x, b.y) - 5.0)
        self.colon = colon
        self.colon_radius = radius

    def _paint_muscles(self, p: Painter) -> None:
        u = self.rng.uniform
        m = CODE["muscle"]
        for side in (-1.0, 1.0):  # psoas
            pts = np.array([[side * 28.0, 0.0, 30.0], [side * 42.0, 0.0, -80.0], [side * 58.0, 0.0, -190.0]])
            pts[:, 1] = self.spine_y(pts[:, 2].astype(np.float32)) + np.array([2.0, 10.0, 30.0])
            p.capsule_path(m, pts, np.array([10.0, 18.0, 24.0]) * u(0.85, 1.15))
        blk = self._slab(p, -1e4, 1e4)
        sy = self.spine_y(blk.z)
        for side in (-1.0, 1.0):  # erector spinae, along the whole trunk
            q = ((blk.x - side * 38.0) / 30.0) ** 2 + ((blk.y - (sy - 48.0)) / 26.0) ** 2
            p.paint(blk, (q <= 1.0) & (self.outline_q(blk, self.fat) <= 1.0), m)

    def _paint_organs(self, p: Painter) -> None:
        u = self.rng.uniform
        ai, bi = self.a0 - self.fat - self.muscle, self.b0 - self.fat - self.muscle
        below = lambda gap: (lambda b: (b.z < self.diaphragm(b.x, b.y) - gap) & self.cavity(b))  # noqa: E731
        # liver: right upper quadrant, below the right dome, left lobe to x ~ -0.4 ai
        s = u(0.9, 1.1)
        c = np.array([0.30 * ai + u(-5, 5), 0.05 * bi, self.dome_r - 80.0 + u(-8, 8)])
        semi = np.array([0.70 * ai, 0.78 * bi, 90.0]) * s
        rot = rotation_matrix(np.array([u(-5, 5), u(-14, -6), u(-5, 5)]))
        z_inf = self.dome_r - 175.0 + u(-10, 10)

        def liver_keep(b: Block) -> np.ndarray:
            return (below(4.0)(b) & (b.x > -0.45 * ai + 0.3 * (b.y - 0.3 * bi))
                    & (b.z > z_inf + 0.6 * (0.45 * ai - b.x)))

        p.ellipsoid(CODE["liver"], c, semi, rot, extra=liver_keep)
        # spleen: left, posterior, under the left dome
        c = np.array([-0.70 * ai + u(-5, 5), float(self.spine_y(np.float32(40.0))) + u(0, 15),
                      self.dome_l - 60.0 + u(-8, 8)])
        semi = np.array([24.0, 44.0, 50.0]) * u(0.85, 1.15)
        p.ellipsoid(CODE["spleen"], c, semi, rotation_matrix(np.array([u(-10, 10), u(-10, 10), u(-45, -25)])),
                    extra=below(4.0))
        # kidneys: cortex with an inner medulla
        self.kidneys = []
        for side, z0 in ((1.0, -25.0), (-1.0, -8.0)):
            c = np.array([side * (60.0 + u(-6, 6)), 0.0, z0 + u(-12, 12)])
            c[1] = float(self.spine_y(np.float32(c[2]))) + u(0.0, 12.0)
            semi = np.array([26.0, 22.0, 52.0]) * u(0.88, 1.12)
            rot = rotation_matrix(np.array([u(-8, 8), side * u(8, 18), side * u(20, 35)]))
            p.ellipsoid(CODE["kidney_cortex"], c, semi, rot)
            p.ellipsoid(CODE["kidney_medulla"], c - rot[:, 0] * side * 3.0, semi * u(0.56, 0.66), rot)
            self.kidneys.append((c, semi))
        # bladder, anterior pelvis, volume varies with filling
        c = np.array([u(-8, 8), 0.35 * bi, -215.0 + u(-10, 10)])
        semi = np.array([46.0, 36.0, 38.0]) * u(0.75, 1.2)
        p.ellipsoid(CODE["urine"], c, semi, rotation_matrix(np.array([u(-10, 10), 0.0, u(-10, 10)])),
                    extra=self.cavity)
        # pancreas: head right of the aorta, tail to the splenic hilum
        sy = float(self.spine_y(np.float32(0.0)))
        pts = np.array([[28.0, sy + 45.0, -38.0], [-5.0, sy + 55.0, -18.0], [-45.0, sy + 45.0, -5.0],
                        [-0.62 * ai, sy + 28.0, 5.0]]) + self.rng.normal(0.0, 4.0, (4, 3))
        self.pancreas = pts
        p.capsule_path(CODE["pancreas"], pts, np.array([15.0, 12.0, 11.0, 10.0]) * u(0.85, 1.15),
                       only=(CODE["visceral_fat"], CODE["bowel"]))

    def _paint_vessels(self, p: Painter) -> None:
        u = self.rng.uniform
        blood = CODE["blood"]
        zh = self.dome_l + 55.0
        c = np.array([-25.0 + u(-8, 8), 0.0, zh + u(-8, 8)])
        c[1] = float(self.spine_y(np.float32(c[2]))) + 70.0
        semi = np.array([62.0, 46.0, 56.0]) * u(0.88, 1.1)
        p.ellipsoid(blood, c, semi, rotation_matrix(np.array([u(-10, 10), 20.0, -30.0])), extra=self.cavity)
        for x, dy, r, z0, z1 in ((-16.0, 34.0, 11.5, -140.0, zh), (24.0, 30.0, 12.0, -160.0, self.dome_r - 5.0)):
            z = np.arange(z0, z1, 4.0)
            pts = np.stack([np.full_like(z, x), self.spine_y(z.astype(np.float32)) + dy, z], axis=1)
            p.capsule_path(blood, pts[::4] if len(pts) > 8 else pts, r * u(0.9, 1.1))

    def _paint_bones(self, p: Painter) -> None:
        u = self.rng.uniform
        canc, cort, disc, soft = CODE["cancellous_bone"], CODE["cortical_bone"], CODE["disc"], CODE["soft_tissue"]
        blk = self._slab(p, -205.0, 1e4)
        sy = self.spine_y(blk.z)
        # vertebral bodies with cortical rim and discs, canal, posterior elements
        q = (blk.x / 24.0) ** 2 + ((blk.y - sy) / 18.0) ** 2
        phase = np.mod(blk.z - u(0, 34), 34.0)
        is_disc = phase >= 27.0
        p.paint(blk, (q <= 1.0) & ~is_disc, canc)
        p.paint(blk, (q <= 1.0) & (q >= 0.72) & ~is_disc, cort)
        p.paint(blk, (q <= 1.0) & is_disc, disc)
        rc = np.sqrt(blk.x**2 + (blk.y - (sy - 30.0)) ** 2)
        p.paint(blk, (rc <= 15.0) & (blk.y < sy - 16.0), cort)
        p.paint(blk, rc <= 8.5, soft)
        p.paint(blk, (np.abs(blk.x) < 5.0) & (blk.y < sy - 42.0) & (blk.y > sy - 62.0) & ~is_disc, cort)
        lumbar = (blk.z < 30.0) & (blk.z > -175.0)
        p.paint(blk, lumbar & (np.abs(blk.x) < 42.0) & (np.abs(blk.y - (sy - 26.0)) < 5.0) & (phase < 14.0), cort)
        # ribs (12 pairs, descending anteriorly) and sternum
        bi = self.b0 - self.fat - self.muscle
        blk = self._slab(p, self.dome_r - 90.0, 1e4)
        if blk is not None:
            yb = blk.y / self.b(blk.z, self.fat + self.muscle)
            rho = np.sqrt((blk.x / self.a(blk.z, self.fat + self.muscle)) ** 2 + np.where(blk.y > 0, yb**2, yb**4))
            top = self.dome_r + 245.0 + u(-10, 10)
            zrel = blk.z + 45.0 * (blk.y + bi) / (2.0 * bi)
            k = np.rint((top - zrel) / 25.0)
            dz = zrel - (top - 25.0 * k)
            limit = np.array([0.9] * 7 + [0.5, 0.2, -0.1, -0.4, -0.6]) * bi
            kk = np.clip(k, 0, 11).astype(np.int64)
            rib = ((np.abs(rho - 1.05) * bi < 5.0) & (np.abs(dz) < 5.5) & (k >= 0) & (k <= 11)
                   & (blk.y < limit[kk]) & ~((np.abs(blk.x) < 30.0) & (blk.y > 0.5 * bi)))
            p.paint(blk, rib, cort)
            ster = ((np.abs(blk.x) < 14.0) & (blk.y > bi - 14.0) & (blk.y < bi + 2.0)
                    & (blk.z > self.dome_r + 10.0) & (blk.z < self.dome_r + 200.0))
            p.paint(blk, ster, canc)
        # sacrum, iliac wings, femoral heads and necks, pubic rami
        sy = float(self.spine_y(np.float32(-210.0)))
        p.ellipsoid(canc, np.array([0.0, sy - 5.0, -215.0]), np.array([46.0, 20.0, 42.0]),
                    rotation_matrix(np.array([-30.0, 0.0, 0.0])))
        for side in (-1.0, 1.0):
            blk, q = p.ellipsoid_q(np.array([side * 20.0, sy + 45.0, -185.0]), np.array([118.0, 82.0, 80.0]))
            if blk is not None:
                wing = ((q <= 1.0) & (q >= 0.80) & (side * blk.x > 42.0) & (blk.y < sy + 70.0)
                        & (blk.z > -245.0) & (blk.z < -125.0))
                p.paint(blk, wing, canc)
                p.paint(blk, wing & (q >= 0.96), cort)
            head = np.array([side * (90.0 + u(-5, 5)), sy + 75.0, -258.0])
            p.ellipsoid(cort, head, np.array([24.0, 24.0, 24.0]))
            p.ellipsoid(canc, head, np.array([20.0, 20.0, 20.0]))
            p.capsule_path(cort, np.array([head, head + np.array([side * 25.0, -10.0, -80.0])]), 15.0)
            p.capsule_path(canc, np.array([head, np.array([side * 14.0, sy + 115.0, -262.0])]), 10.0)

    def _paint_gas(self, p: Painter) -> None:
        rng, u = self.rng, self.rng.uniform
        only = (CODE["bowel"],)
        gas = CODE["bowel_gas"]
        c, semi, rot = self.stomach
        p.ellipsoid(gas, c + rot @ np.array([0.0, 0.5 * semi[1], 0.55 * semi[2]]), semi * 0.45, rot, only=only)
        for _ in range(int(rng.integers(3, 8))):
            i = int(rng.integers(0, len(self.colon) - 1))
            s = u(0.0, 1.0)
            pt = (1 - s) * self.colon[i] + s * self.colon[i + 1]
            r = u(6.0, 12.0)
            p.ellipsoid(gas, pt + rng.normal(0.0, 3.0, 3), np.array([r, r, r * 1.5]), only=only)

    # ---- tumours ---------------------------------------------------------------------------------------
    def _paint_tumours(self, p: Painter) -> list[Tumour]:
        rng, u = self.rng, self.rng.uniform
        n = int(rng.integers(1, MAX_TUMOURS + 1))
        tumours: list[Tumour] = []
        bad = tuple(CODE[name] for name in NOT_FOR_TUMOURS)
        for _ in range(n):
            site = str(rng.choice(["liver", "pancreas", "node", "mesentery", "bone"], p=[0.5, 0.15, 0.15, 0.1, 0.1]))
            diameter = float(np.exp(u(np.log(10.0), np.log(50.0))))
            if site == "bone":
                diameter = min(diameter, 26.0)
            for _attempt in range(200):
                center = self._tumour_center(p, site, diameter)
                if center is None:
                    site = "liver" if site != "liver" else "mesentery"
                    continue
                r = diameter / 2.0
                if any(np.linalg.norm(center - t.center) < r + t.semi_axes.max() + 4.0 for t in tumours):
                    continue
                probe = center + r * 0.85 * np.vstack([np.zeros(3), np.eye(3), -np.eye(3)])
                probe_codes = self._codes_at(p, probe)
                if site == "liver":
                    if not np.all(probe_codes == CODE["liver"]):
                        continue
                elif site != "bone" and np.isin(probe_codes, (*bad, CODE["liver"])).any():
                    continue
                break
            else:
                continue
            semi = r * rng.uniform(0.85, 1.15, 3)
            rot = rotation_matrix(rng.uniform(-40, 40, 3))
            necrotic = None
            if diameter >= 25.0 and rng.random() < 0.6:
                necrotic = semi * u(0.35, 0.6)
            tumours.append(Tumour(len(tumours), site, center, semi, rot, necrotic,
                                  float(u(0.0, 0.08)) if necrotic is not None else 0.0))
        for t in tumours:
            viable, core = tumour_codes(t.index)
            only = None if t.site != "bone" else tuple(c for c in range(256) if c != CODE["lung"])
            p.ellipsoid(viable, t.center, t.semi_axes, t.rotation, only=only)
            if t.necrotic_semi_axes is not None:
                offset = t.rotation @ (rng.uniform(-0.15, 0.15, 3) * t.semi_axes)
                p.ellipsoid(core, t.center + offset, t.necrotic_semi_axes, t.rotation, only=(viable,))
        return tumours

    def _codes_at(self, p: Painter, pts: np.ndarray) -> np.ndarray:
        idx = [np.clip(np.rint((pts[:, a] - p.axes[a][0]) / self.h).astype(int), 0, p.axes[a].size - 1)
               for a in range(3)]
        return p.codes[idx[0], idx[1], idx[2]]

    def _tumour_center(self, p: Painter, site: str, diameter: float) -> np.ndarray | None:
        rng, u = self.rng, self.rng.uniform
        if site == "liver":
            where = np.argwhere(p.codes == CODE["liver"])
            if where.size == 0:
                return None
            i = where[int(rng.integers(0, len(where)))]
            return np.array([p.axes[a][i[a]] for a in range(3)], float)
        if site == "pancreas":
            i = int(rng.integers(0, len(self.pancreas) - 1))
            s = u(0, 1)
            return (1 - s) * self.pancreas[i] + s * self.pancreas[i + 1] + rng.normal(0, 4, 3)
        if site == "node":
            z = u(-130.0, 20.0)
            side = rng.choice([-1.0, 1.0])
            return np.array([side * u(22.0, 40.0), float(self.spine_y(np.float32(z))) + u(20.0, 50.0), z])
        if site == "bone":
            z = u(-150.0, 200.0)
            return np.array([u(-6, 6), float(self.spine_y(np.float32(z))) + u(-4, 4), z])
        ai, bi = self.a0 - self.fat - self.muscle, self.b0 - self.fat - self.muscle
        return np.array([u(-0.45, 0.45) * ai, u(0.0, 0.6) * bi, u(-160.0, -60.0)])


def build_anatomy(rng: np.random.Generator, center: np.ndarray, z_range: tuple[float, float],
                  spacing_mm: float) -> Anatomy:
    """Random anatomy of one patient around body centre ``center`` (world mm)."""
    return AnatomyBuilder(rng, spacing_mm).build(np.asarray(center, float), z_range)


def tumour_summary(t: Tumour) -> dict[str, Any]:
    """JSON description of a tumour (world-independent)."""
    return {"site": t.site, "diameter_mm": round(t.diameter_mm, 1),
            "necrotic_core": t.necrotic_semi_axes is not None,
            "necrotic_uptake_fraction": round(t.necrotic_fraction, 4), "ct_hu": TUMOUR_HU[t.site]}

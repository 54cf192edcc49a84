"""The report's PNG figures (matplotlib, Agg), all on the reference SPECT grid, through one chosen point.

Display: every volume is flipped/permuted (exactly, no interpolation) to RAS array order; coronal and axial
slices are shown in the radiological convention (patient right on the image left, superior/anterior at the
top) with the true pixel aspect. A cyan crosshair marks the point (the hottest tumour-like spot by default).

- ``overlay_<id>.png`` (paper Figures 2-5): coronal and axial rows; CT and SPECT before and after
  registration as colour overlays (reference green, time point magenta: aligned structures turn grey/white,
  misalignment shows as green/magenta fringes) and the registered SPECT fused on the registered CT.
- ``fields.png``: per time point the absolute displacement as RGB (|x|, |y|, |z| over the largest component),
  the deformed grid (where the reference grid lines land in the time point) and the Jacobian determinant.
- ``profiles.png`` (Figure 6): vertical and horizontal line profiles of the normalised activity through the
  point, reference and every registered SPECT (dashed: before registration).
- ``tia_maps.png`` (Figure 7): TIA, fit RMSE, eq.-6 rule and dose maps (and the phantom's true imaged TIA and
  the difference, when known).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from ..dosimetry.tia import RULE_SHORT

CT_WINDOW_HU = (-350.0, 450.0)
RULE_COLOURS = ("#000000", "#2c7bb6", "#fdae61", "#d7191c", "#abd9e9", "#1a9641", "#a6d96a")  # by TiaRule
RULE_LABELS = tuple(RULE_SHORT[rule] for rule in sorted(RULE_SHORT))
DPI = 80
#: zlib level of the PNGs: 1 encodes the seven figures in about 0.3 s instead of 0.6 s (Pillow's default, 6), for
#: files 7-17 % larger (measured on the internal phantom's report figures)
PNG_COMPRESS_LEVEL = 1


@dataclass
class FigureData:
    """Everything the figures show (arrays on the reference SPECT grid)."""

    patient_id: str
    method: str
    reference: str
    ids: list[str]
    hours: list[float]
    affine: np.ndarray
    point: tuple[int, int, int]
    ct_before: dict[str, np.ndarray]
    ct_after: dict[str, np.ndarray]
    spect_before: dict[str, np.ndarray]
    spect_after: dict[str, np.ndarray]
    disp_mm: dict[str, np.ndarray]
    jacobian: dict[str, np.ndarray]
    tia: np.ndarray
    rmse: np.ndarray
    rule: np.ndarray
    dose: np.ndarray | None = None
    true_tia: np.ndarray | None = None
    dvh: tuple[np.ndarray, dict[str, np.ndarray]] | None = None  # (dose bins Gy, {VOI: % volume >= dose})
    notes: list[str] = field(default_factory=list)


class Display:
    """Exact reorientation of reference-grid arrays to RAS order, and the slices shown."""

    def __init__(self, shape: tuple[int, ...], affine: np.ndarray) -> None:
        self.shape = tuple(int(s) for s in shape[:3])
        self.ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                                    nib.orientations.axcodes2ornt("RAS"))
        spacing = voxel_sizes(affine)
        self.spacing = spacing[self.ornt[:, 0].astype(int).argsort()]  # per RAS output axis

    def vol(self, arr: np.ndarray) -> np.ndarray:
        """A (X, Y, Z) array in RAS order."""
        return nib.orientations.apply_orientation(arr, self.ornt)

    def point(self, idx: tuple[int, int, int]) -> tuple[int, int, int]:
        """A voxel index in RAS order."""
        out = [0, 0, 0]
        for axis, (new_axis, flip) in enumerate(self.ornt):
            n = self.shape[axis]
            out[int(new_axis)] = n - 1 - idx[axis] if flip < 0 else idx[axis]
        return out[0], out[1], out[2]

    @staticmethod
    def coronal(vol: np.ndarray, j: int) -> np.ndarray:
        """Rows superior -> inferior, columns patient right -> left."""
        return vol[:, j, :].T[::-1, ::-1]

    @staticmethod
    def axial(vol: np.ndarray, k: int) -> np.ndarray:
        """Rows anterior -> posterior, columns patient right -> left."""
        return vol[:, :, k].T[::-1, ::-1]

    def views(self, p: tuple[int, int, int]) -> list[tuple[str, Callable[[np.ndarray], np.ndarray], float,
                                                           tuple[float, float]]]:
        """(name, slicer of a RAS volume, pixel aspect, crosshair (row, col)) for the coronal and axial view."""
        nx, ny, nz = self.vol(np.empty(self.shape, np.uint8)).shape
        sx, sy, sz = self.spacing
        return [("coronal", lambda v: self.coronal(v, p[1]), sz / sx, (nz - 1 - p[2], nx - 1 - p[0])),
                ("axial", lambda v: self.axial(v, p[2]), sy / sx, (ny - 1 - p[1], nx - 1 - p[0]))]


def preload_plotting() -> None:
    """Import matplotlib (Agg) and pyplot now (about 1 s); the pipeline does it on a worker thread early."""
    _plt()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_png(fig: Any, target: Path) -> None:
    from ..io.imageio import atomic_path

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})


def _save(fig: Any, target: Path) -> None:
    _write_png(fig, target)
    _plt().close(fig)


def _fixed_layout(fig: Any, margins_in: tuple[float, float, float, float], wspace: float, hspace: float) -> None:
    """Grid of image panels placed by fixed margins (left, right, bottom, top; inches) and gaps (fractions of a
    panel): what ``tight_layout`` finds for these figures (their text is the same whatever the data), without its
    cost of measuring every title and tick label (about 0.2 s per figure)."""
    width, height = fig.get_size_inches()
    left, right, bottom, top = margins_in
    fig.subplots_adjust(left=left / width, right=1.0 - right / width, bottom=bottom / height, top=1.0 - top / height,
                        wspace=wspace, hspace=hspace)


def _norm_ct(img: np.ndarray) -> np.ndarray:
    lo, hi = CT_WINDOW_HU
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def _spect_scale(vol: np.ndarray) -> float:
    """Display maximum: the 99th percentile of the positive voxels (a hot bladder does not dim the rest)."""
    positive = vol[vol > 0]
    return float(np.percentile(positive, 99.0)) if positive.size else 1.0


def _norm_spect(img: np.ndarray, vmax: float) -> np.ndarray:
    return np.sqrt(np.clip(img / max(vmax, 1e-12), 0.0, 1.0))


def _composite(ref: np.ndarray, mov: np.ndarray) -> np.ndarray:
    """Reference in green, moving in magenta: equal intensities give grey."""
    return np.stack([mov, ref, mov], axis=-1)


def _cross(ax: Any, rc: tuple[float, float]) -> None:
    ax.axhline(rc[0], color="cyan", lw=0.6, alpha=0.8)
    ax.axvline(rc[1], color="cyan", lw=0.6, alpha=0.8)


def _off(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def overlay_figures(d: FigureData, targets: dict[str, Path]) -> list[Path]:
    """Before/after colour overlays of each time point in ``targets`` against the reference (coronal and axial).

    One figure is laid out once; for each time point its pixels, scale and title are replaced before it is saved
    (the same PNG as a fresh figure, without building ten panels again: about 0.1 s per time point).
    """
    if not targets:
        return []
    plt = _plt()
    disp = Display(d.tia.shape, d.affine)
    views = disp.views(disp.point(d.point))
    ref = d.reference
    ct_ref, sp_ref = disp.vol(d.ct_after[ref]), disp.vol(d.spect_after[ref])
    v_ref = _spect_scale(d.spect_after[ref])
    titles = ("CT before", "CT after", "SPECT before", "SPECT after", "registered SPECT on CT")
    fig, axes = plt.subplots(2, 5, figsize=(15.5, 7.4), squeeze=False)
    shown: list[list[Any]] = [[] for _ in views]  # per row: the four overlays, then the fused CT and SPECT
    for tid, target in targets.items():
        ct_b, ct_a = disp.vol(d.ct_before[tid]), disp.vol(d.ct_after[tid])
        sp_b, sp_a = disp.vol(d.spect_before[tid]), disp.vol(d.spect_after[tid])
        v_mov = _spect_scale(d.spect_before[tid])
        for row, (name, cut, aspect, rc) in enumerate(views):
            fused_spect = np.ma.masked_less(cut(sp_a), 0.2 * v_mov)
            pixels = [
                _composite(_norm_ct(cut(ct_ref)), _norm_ct(cut(ct_b))),
                _composite(_norm_ct(cut(ct_ref)), _norm_ct(cut(ct_a))),
                _composite(_norm_spect(cut(sp_ref), v_ref), _norm_spect(cut(sp_b), v_mov)),
                _composite(_norm_spect(cut(sp_ref), v_ref), _norm_spect(cut(sp_a), v_mov)),
                cut(ct_a), fused_spect,
            ]
            if shown[row]:
                for image, data in zip(shown[row], pixels, strict=True):
                    image.set_data(data)
                shown[row][-1].set_clim(0, v_mov)
                continue
            shown[row] = [axes[row, col].imshow(img, aspect=aspect, interpolation="nearest")
                          for col, img in enumerate(pixels[:4])]
            ax = axes[row, 4]
            shown[row].append(ax.imshow(pixels[4], cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1],
                                        aspect=aspect))
            shown[row].append(ax.imshow(fused_spect, cmap="hot", vmin=0, vmax=v_mov, alpha=0.6, aspect=aspect))
            for col in range(5):
                _cross(axes[row, col], rc)
                _off(axes[row, col])
                axes[row, col].set_title(f"{titles[col]} ({name})", fontsize=9)
            axes[row, 0].text(0.02, 0.5, "R", color="yellow", transform=axes[row, 0].transAxes, fontsize=9)
            axes[row, 0].text(0.95, 0.5, "L", color="yellow", transform=axes[row, 0].transAxes, fontsize=9)
        fig.suptitle(f"{d.patient_id}: {tid} registered to the reference {ref} ({d.method}); green = reference "
                     f"{ref}, magenta = {tid}, grey/white = aligned", fontsize=10)
        _fixed_layout(fig, (0.15, 0.15, 0.15, 0.5), wspace=0.05, hspace=0.12)
        _write_png(fig, target)
    plt.close(fig)
    return list(targets.values())


def fields_figure(d: FigureData, target: Path) -> Path:
    """RGB |displacement|, deformed grid and Jacobian determinant (coronal), one row per moving time point."""
    plt = _plt()
    from matplotlib.collections import LineCollection
    from matplotlib.colors import TwoSlopeNorm

    disp = Display(d.tia.shape, d.affine)
    p = disp.point(d.point)
    _, cut, aspect, rc = disp.views(p)[0]
    moving = [t for t in d.ids if t != d.reference] or d.ids
    ct_ref = cut(disp.vol(d.ct_after[d.reference]))
    fig, axes = plt.subplots(len(moving), 3, figsize=(11.5, 4.2 * len(moving)), squeeze=False)
    sx, _, sz = disp.spacing
    for row, tid in enumerate(moving):
        comps = [cut(disp.vol(d.disp_mm[tid][c])) for c in range(3)]
        mags = np.abs(np.stack(comps, axis=-1))
        dmax = float(np.abs(d.disp_mm[tid]).max())
        axes[row, 0].imshow(mags / dmax if dmax > 0 else mags, aspect=aspect, interpolation="nearest")
        axes[row, 0].set_title(f"{tid}: |d| as RGB = (|x|, |y|, |z|) / {dmax:.2f} mm", fontsize=9)
        ax = axes[row, 1]
        ax.imshow(ct_ref, cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], alpha=0.35, aspect=aspect)
        # displayed columns run along -x, rows along -z: a displacement (dx, dz) mm moves (-dx/sx, -dz/sz) px
        dc, dr = -comps[0] / sx, -comps[2] / sz
        rows_n, cols_n = dc.shape
        step = max(2, min(rows_n, cols_n) // 16)
        rr, cc = np.mgrid[0:rows_n, 0:cols_n]
        x, y = cc + dc, rr + dr
        lines = [np.column_stack((x[r], y[r])) for r in range(0, rows_n, step)]
        lines += [np.column_stack((x[:, c], y[:, c])) for c in range(0, cols_n, step)]
        ax.add_collection(LineCollection(lines, colors="k", linewidths=0.5))  # one artist, not one per line
        ax.set_xlim(-0.5, cols_n - 0.5)
        ax.set_ylim(rows_n - 0.5, -0.5)
        ax.set_aspect(aspect)
        ax.set_title(f"{tid}: deformed grid (every {step} voxels)", fontsize=9)
        jac = cut(disp.vol(d.jacobian[tid]))
        lim = max(0.05, float(np.percentile(np.abs(d.jacobian[tid] - 1.0), 99.5)))
        norm = TwoSlopeNorm(vcenter=1.0, vmin=min(float(jac.min()), 1.0 - lim), vmax=1.0 + lim)
        im = axes[row, 2].imshow(np.minimum(jac, 1.0 + lim), cmap="RdBu_r", norm=norm, aspect=aspect)
        folds = float(np.mean(d.jacobian[tid] <= 0) * 100)
        if np.any(jac <= 0):
            axes[row, 2].contour(jac <= 0, levels=[0.5], colors="k", linewidths=0.6)
        axes[row, 2].set_title(f"{tid}: Jacobian determinant ({folds:.2f} % <= 0)", fontsize=9)
        fig.colorbar(im, ax=axes[row, 2], fraction=0.046, pad=0.02)
        for col in range(3):
            _cross(axes[row, col], rc)
            _off(axes[row, col])
    fig.suptitle(f"{d.patient_id}: displacement fields on the reference {d.reference} SPECT grid, coronal, "
                 f"{d.method}", fontsize=10)
    _fixed_layout(fig, (0.15, 0.6, 0.15, 0.6), wspace=0.05, hspace=0.1)
    _save(fig, target)
    return target


def _profile(vol: np.ndarray, p: tuple[int, int, int], axis: int) -> np.ndarray:
    index: list[Any] = list(p)
    index[axis] = slice(None)
    line = vol[tuple(index)].astype(np.float64)
    top = line.max()
    return line / top if top > 0 else line


def profiles_figure(d: FigureData, target: Path) -> Path:
    """Vertical (superior-inferior) and horizontal (right-left) normalised activity profiles through the point."""
    plt = _plt()
    disp = Display(d.tia.shape, d.affine)
    p = disp.point(d.point)
    _, cut, aspect, rc = disp.views(p)[0]
    ref = d.reference
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1.4, 1.4]})
    axes[0].imshow(np.sqrt(np.clip(cut(disp.vol(d.spect_after[ref])), 0, None)), cmap="hot", aspect=aspect,
                   vmin=0, vmax=np.sqrt(float(np.percentile(d.spect_after[ref], 99.9)) or 1.0))
    axes[0].axhline(rc[0], color="cyan", lw=0.8)
    axes[0].axvline(rc[1], color="lime", lw=0.8)
    axes[0].set_title(f"reference {ref} SPECT, coronal\n(vertical line green, horizontal cyan)", fontsize=9)
    _off(axes[0])
    colours = plt.get_cmap("tab10")
    # + superior for the vertical profile; + patient left for the horizontal one (as in the image)
    for ax, axis, name, spacing in ((axes[1], 2, "vertical (superior-inferior)", disp.spacing[2]),
                                    (axes[2], 0, "horizontal (right-left)", -disp.spacing[0])):
        ref_vol = disp.vol(d.spect_after[ref])
        n = ref_vol.shape[axis]
        mm = (np.arange(n) - p[axis]) * spacing
        ax.plot(mm, _profile(ref_vol, p, axis), color="k", lw=2.2, label=f"{ref} (reference)")
        for i, tid in enumerate(t for t in d.ids if t != ref):
            colour = colours(i % 10)
            ax.plot(mm, _profile(disp.vol(d.spect_after[tid]), p, axis), color=colour, lw=1.3,
                    label=f"{tid} registered")
            ax.plot(mm, _profile(disp.vol(d.spect_before[tid]), p, axis), color=colour, lw=1.0, ls="--",
                    alpha=0.7, label=f"{tid} before")
        ax.axvline(0, color="cyan", lw=0.6)
        if axis == 2:
            ax.set_xlabel("mm from the point (+ = superior)")
        else:
            ax.set_xlabel("mm from the point (+ = patient left)")
        ax.set_ylabel("activity / profile maximum")
        ax.set_title(f"{name} profile", fontsize=10)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7, loc="upper right", ncol=1)
    fig.suptitle(f"{d.patient_id}: line profiles through voxel {tuple(d.point)} ({d.method})", fontsize=10)
    _fixed_layout(fig, (0.15, 0.15, 0.6, 0.65), wspace=0.15, hspace=0.2)  # the profiles' y axes are 0-1
    _save(fig, target)
    return target


def _rmse_scale(rmse: np.ndarray, rule: np.ndarray) -> float:
    """RMSE display maximum from the mono-exponential voxels (rule 1), where the fit is the TIA model."""
    fitted = rmse[(rule == 1) & np.isfinite(rmse)]
    return float(np.percentile(fitted, 99.5)) if fitted.size and np.percentile(fitted, 99.5) > 0 else 1.0


def tia_figure(d: FigureData, target: Path) -> Path:
    """TIA, fit RMSE, eq.-6 rule and dose maps (coronal and axial); truth and difference when known."""
    plt = _plt()
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    disp = Display(d.tia.shape, d.affine)
    p = disp.point(d.point)
    tia_max = float(np.percentile(d.tia[d.tia > 0], 99.9)) if np.any(d.tia > 0) else 1.0
    columns: list[tuple[str, np.ndarray, dict[str, Any]]] = [
        ("TIA (MBq h/mL)", d.tia, {"cmap": "hot", "vmin": 0, "vmax": tia_max}),
        ("fit RMSE (Bq/mL)", d.rmse, {"cmap": "viridis", "vmin": 0, "vmax": _rmse_scale(d.rmse, d.rule)}),
        ("eq.-6 rule", d.rule.astype(np.float32), {"cmap": ListedColormap(RULE_COLOURS),
                                                   "norm": BoundaryNorm(np.arange(-0.5, len(RULE_COLOURS)),
                                                                       len(RULE_COLOURS))}),
    ]
    if d.dose is not None:
        columns.append(("dose (Gy)", d.dose, {"cmap": "inferno", "vmin": 0,
                                              "vmax": float(np.percentile(d.dose, 99.9)) or 1.0}))
    if d.true_tia is not None:
        diff = d.tia - d.true_tia
        lim = float(np.percentile(np.abs(diff), 99.9)) or 1.0
        columns.append(("true TIA, imaged (MBq h/mL)", d.true_tia, {"cmap": "hot", "vmin": 0, "vmax": tia_max}))
        columns.append(("TIA - truth (MBq h/mL)", diff, {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}))
    fig, axes = plt.subplots(2, len(columns), figsize=(3.4 * len(columns) + 0.6, 7.6), squeeze=False)
    for row, (name, cut, aspect, rc) in enumerate(disp.views(p)):
        for col, (title, vol, kwargs) in enumerate(columns):
            axes[row, col].imshow(cut(disp.vol(vol)), aspect=aspect, interpolation="nearest", **kwargs)
            _cross(axes[row, col], rc)
            _off(axes[row, col])
            axes[row, col].set_title(f"{title} ({name})", fontsize=9)
    _fixed_layout(fig, (0.15, 0.6, 0.75, 0.5), wspace=0.25, hspace=0.1)
    # one colour bar per column (both views share its scale), made after the layout: it takes its room from the
    # placed panels (each colour bar costs about 45 ms)
    for col, (title, _, _) in enumerate(columns):
        if title != "eq.-6 rule":
            fig.colorbar(axes[0, col].images[0], ax=list(axes[:, col]), fraction=0.046, pad=0.02)
    handles = [Patch(color=c, label=f"{i} {n}") for i, (c, n) in enumerate(zip(RULE_COLOURS, RULE_LABELS,
                                                                                 strict=True))]
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=len(handles), title="TIA rule", title_fontsize=8)
    fig.suptitle(f"{d.patient_id}: voxel TIA on the reference {d.reference} SPECT grid ({d.method}); "
                 f"time points {', '.join(d.ids)}", fontsize=10)
    _save(fig, target)
    return target


def dvh_figure(d: FigureData, target: Path) -> Path:
    """Cumulative dose-volume histograms of the VOIs, with the 23 Gy kidney limit marked."""
    from ..dosimetry.dose import KIDNEY_LIMIT_GY

    plt = _plt()
    assert d.dvh is not None
    bins, curves = d.dvh
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, pct in curves.items():
        ax.plot(bins, pct, label=name, lw=1.6 if name.startswith(("kidney", "tumour")) else 1.0)
    if bins[-1] >= KIDNEY_LIMIT_GY:
        ax.axvline(KIDNEY_LIMIT_GY, color="grey", ls="--", lw=0.8, label=f"{KIDNEY_LIMIT_GY:g} Gy")
    ax.set(xlabel="absorbed dose (Gy)", ylabel="volume receiving at least this dose (%)", ylim=(0, 101),
           xlim=(0, float(bins[-1])), title=f"{d.patient_id}: cumulative DVH per VOI ({d.method})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _fixed_layout(fig, (0.72, 0.22, 0.6, 0.37), wspace=0.2, hspace=0.2)  # y axis 0-101 %: the same labels always
    _save(fig, target)
    return target


def render_all(d: FigureData, folder: Path) -> list[Path]:
    """Write every figure into ``folder``; returns the paths in report order."""
    paths = overlay_figures(d, {tid: folder / f"overlay_{tid}.png" for tid in d.ids if tid != d.reference})
    paths.append(fields_figure(d, folder / "fields.png"))
    paths.append(profiles_figure(d, folder / "profiles.png"))
    paths.append(tia_figure(d, folder / "tia_maps.png"))
    if d.dvh is not None:
        paths.append(dvh_figure(d, folder / "dvh.png"))
    return paths

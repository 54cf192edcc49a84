"""Generation of phantom patients and cohorts (the public entry points)."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .anatomy import Anatomy, build_anatomy, tumour_summary
from .datalist import (
    build_datalist,
    check_index,
    check_seed,
    patient_seed,
    patient_timepoints,
    plan_cohort,
)
from .geometry import FieldSampler, Grid, Lattice
from .imaging import FrameCodes, blur, ct_image, lookup_codes, spect_image
from .kinetics import Curve, draw_curves, effective_half_life
from .motion import draw_motion, probe_points
from .spec import (
    FIELD_SCALE,
    KIDNEY_LABELS,
    LABEL_NAMES,
    LAMBDA_PHYS,
    TUMOUR_LABEL_BASE,
    CohortSpec,
    check_downsample,
    get_cohort,
    patient_id,
)
from .writer import AsyncSaver, atomic_dir, field_image, is_nonempty_dir, nifti, write_json

GENERATOR_VERSION = "1"
LATTICE_MM = 20.0  # node spacing of the lattice carrying forward/inverse maps (interpolated Catmull-Rom)
MOTION_MARGIN_MM = 45.0  # z margin of the anatomy beyond the imaged range (covers the largest motion)


@dataclass(frozen=True)
class Geometry:
    """Grids of one patient (world mm)."""

    spect: Grid
    ct: dict[str, Grid]
    body_center: np.ndarray
    anatomy_spacing_mm: float


def _scaled(n: int, spacing: float, ds: int) -> tuple[int, float]:
    """Matrix size divided by ``ds`` with the same field of view."""
    m = max(4, int(n) // ds)
    return m, spacing * n / m


def draw_geometry(spec: CohortSpec, rng: np.random.Generator, ds: int, timepoints: tuple[str, ...]) -> Geometry:
    """SPECT grid (shared by all time points) and per time point CT grids; body placement."""
    table_z = float(rng.uniform(-900.0, -300.0))  # scanner z of the SPECT field-of-view centre
    n_slices = int(rng.integers(spec.spect_slices[0], spec.spect_slices[1] + 1))
    nxy, sxy = _scaled(spec.spect_matrix_xy, spec.spect_spacing_mm, ds)
    nz, sz = _scaled(n_slices, spec.spect_spacing_mm, ds)
    spect = Grid.centered((nxy, nxy, nz), (sxy, sxy, sz), (0.0, 0.0, table_z), flip_x=spec.flip_x)
    body_center = np.array([rng.uniform(-15, 15), rng.uniform(-20, 10), table_z + 20.0 + rng.uniform(-15, 15)])
    spect_extent = n_slices * spec.spect_spacing_mm
    thickness = {t: float(rng.choice(spec.ct_slice_mm)) for t in spec.timepoint_ids}
    if len(set(spec.ct_slice_mm)) > 1:  # make sure the slice thickness differs between time points
        ids = spec.timepoint_ids
        while len({thickness[t] for t in ids}) < 2:
            thickness = {t: float(rng.choice(spec.ct_slice_mm)) for t in ids}
    ct = {}
    for t in spec.timepoint_ids:  # drawn for every protocol time point (reproducible whatever is dropped)
        extent = spect_extent + rng.uniform(-spec.ct_extent_jitter_mm, spec.ct_extent_jitter_mm)
        n_ct = round(extent / thickness[t])
        cxy, csxy = _scaled(spec.ct_matrix_xy, spec.ct_spacing_xy_mm, ds)
        cz, csz = _scaled(n_ct, thickness[t], ds)
        center = (rng.uniform(-5, 5), rng.uniform(-10, 10), table_z + rng.uniform(-10, 10))
        ct[t] = Grid.centered((cxy, cxy, cz), (csxy, csxy, csz), center, flip_x=spec.flip_x)
    ct = {t: g for t, g in ct.items() if t in timepoints}
    return Geometry(spect, ct, body_center, anatomy_spacing_mm=2.0 * min(ds, 2))


def _union_bounds(grids: list[Grid]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.min([g.bounds()[0] for g in grids], axis=0)
    hi = np.max([g.bounds()[1] for g in grids], axis=0)
    return lo, hi


def _label_volumes(anat: Anatomy) -> np.ndarray:
    vol = anat.volumes_ml()
    out = np.zeros(256)
    np.add.at(out, anat.table.label, vol)
    return out


def voi_summary(anat: Anatomy, curves: dict[str, Curve], labels_ref: np.ndarray, spect: Grid,
                injected_mbq: float, reference: str) -> dict[str, Any]:
    """tia_voi.json: true TIA (MBq*h) and volumes per organ/tumour inside the reference SPECT field of view,
    from the fine anatomy (``volume_ml_whole``: the whole structure, also outside the field of view)."""
    whole = anat.volumes_ml()
    lo, hi = spect.bounds()
    half = np.abs(np.array(spect.spacing)) / 2.0
    inside = [(anat.grid.coords(a) >= lo[a] - half[a]) & (anat.grid.coords(a) <= hi[a] + half[a]) for a in range(3)]
    vol = np.bincount(anat.codes[np.ix_(*inside)].ravel(), minlength=256) * anat.grid.voxel_ml
    tia_ml = anat.table.lut({k: c.tia() / 1e6 for k, c in curves.items()}).astype(np.float64)
    tia_code = vol * tia_ml
    ref_counts = np.bincount(labels_ref.ravel(), minlength=256) * spect.voxel_ml
    label_of = anat.table.label

    def entry(name: str, labels: list[int]) -> dict[str, Any]:
        codes = np.isin(label_of, labels) & (vol > 0)
        codes[0] = False
        codes_whole = np.isin(label_of, labels) & (whole > 0)
        codes_whole[0] = False
        return {"name": name, "labels": labels, "volume_ml": round(float(vol[codes].sum()), 3),
                "volume_ml_ref_grid": round(float(ref_counts[labels].sum()), 3),
                "volume_ml_whole": round(float(whole[codes_whole].sum()), 3),
                "tia_mbqh": float(tia_code[codes].sum())}

    vois = [entry(LABEL_NAMES[lab], [lab]) for lab in range(1, TUMOUR_LABEL_BASE)]
    vois.append(entry("kidneys", list(KIDNEY_LABELS)))
    for t in anat.tumours:
        lab = TUMOUR_LABEL_BASE + t.index
        e = entry(LABEL_NAMES[lab], [lab])
        core = anat.table.names.index(f"tumour_{t.index + 1}_necrotic")
        e.update(tumour_summary(t))
        e["necrotic_volume_ml"] = round(float(vol[core]), 3)
        e["necrotic_tia_mbqh"] = float(tia_code[core])
        vois.append(e)
    total = float(tia_code[1:].sum())
    compartments = {k: {**c.to_dict(), "tia_mbqh_per_ml": c.tia() / 1e6,
                        "effective_half_life_48_120h": round(effective_half_life(c), 2)} for k, c in curves.items()}
    tissues = [{"code": int(c), "name": anat.table.names[c], "label": int(label_of[c]),
                "compartment": anat.table.compartment[c], "uptake_scale": float(anat.table.scale[c]),
                "volume_ml": round(float(vol[c]), 3), "volume_ml_whole": round(float(whole[c]), 3),
                "tia_mbqh": float(tia_code[c])}
               for c in np.nonzero(whole)[0] if c != 0]
    return {
        "units": {"tia": "MBq*h", "volume": "mL", "compartment_coef": "Bq/mL", "rate": "1/h"},
        "model": "C(t) = sum_j coef_j * exp(-(rate_j + lambda_phys) * t), TIA = sum_j coef_j / (rate_j + lambda)",
        "lambda_phys_per_h": LAMBDA_PHYS,
        "reference": reference,
        "injected_activity_mbq": injected_mbq,
        "label_names": {str(k): v for k, v in LABEL_NAMES.items() if k < TUMOUR_LABEL_BASE + len(anat.tumours)},
        "vois": vois,
        "total_tia_mbqh": total,
        "compartments": compartments,
        "tissues": tissues,
        "note": ("volume_ml and tia_mbqh: the fine anatomy (the truth) inside the reference SPECT field of view; "
                 "volume_ml_whole: the whole structure; volume_ml_ref_grid: labels_ref voxels. Necrotic cores keep "
                 "their tumour's label; necrotic_* describe them (inside the field of view)."),
    }


def generate_patient(out_dir: str | Path, cohort: str, index: int, seed: int, downsample: int = 1,
                     n_timepoints: int | None = None, overwrite: bool = False) -> Path:
    """Generate one patient folder OUT/Pxxx (see docs/CONVENTIONS.md) and return its path.

    Deterministic for (cohort, index, seed, downsample, n_timepoints); written atomically.
    """
    spec = get_cohort(cohort)
    index, seed, ds = check_index(index), check_seed(seed), check_downsample(downsample)
    timepoints = patient_timepoints(spec, index, seed, n_timepoints)
    final = Path(out_dir) / patient_id(index)
    if is_nonempty_dir(final) and not overwrite:
        raise FileExistsError(f"{final}: patient folder exists and is not empty "
                              "(use overwrite=True or --overwrite to replace it)")
    with atomic_dir(final, overwrite=overwrite) as tmp:
        _build_patient(tmp, spec, index, seed, ds, timepoints)
    return final


def _build_patient(folder: Path, spec: CohortSpec, index: int, seed: int, ds: int,
                   timepoints: tuple[str, ...]) -> None:
    pid = patient_id(index)
    children = patient_seed(seed, spec.name, index).spawn(7)  # child 0 plans the time points
    rng_geo, rng_anat, rng_kin, rng_mot = (np.random.default_rng(c) for c in children[1:5])
    noise_seeds = dict(zip(spec.timepoint_ids, children[5].spawn(len(spec.timepoints)), strict=True))

    geo = draw_geometry(spec, rng_geo, ds, timepoints)
    spect = geo.spect
    lo, hi = _union_bounds([spect, *geo.ct.values()])
    anat = build_anatomy(rng_anat, geo.body_center, (lo[2] - MOTION_MARGIN_MM, hi[2] + MOTION_MARGIN_MM),
                         geo.anatomy_spacing_mm)
    mean, sd, gmin, gmax = spec.injected_gbq
    injected_gbq = round(float(np.clip(rng_kin.normal(mean, sd), gmin, gmax)), 3)
    curves = draw_curves(rng_kin, injected_gbq, len(anat.tumours))
    motion = draw_motion(rng_mot, anat.body, spec.timepoint_ids, spec.reference)

    a_lo, a_hi = anat.grid.bounds()
    lattice = Lattice.covering(np.minimum(lo, a_lo), np.maximum(hi, a_hi), LATTICE_MM)
    truth = folder / "truth"
    truth.mkdir()
    saver = AsyncSaver(workers=2)
    aff = spect.affine
    spacing = np.array(spect.spacing, np.float32)[:, None, None, None]
    ref_pv = FrameCodes(anat, spect, None, None, (a_lo, a_hi))
    labels_ref = anat.table.label[ref_pv.center]
    saver.save(nifti(labels_ref, aff), truth / "labels_ref.nii.gz")
    probe = probe_points(anat.body, 40.0)
    entries, motion_info = [], {}
    try:
        for t in timepoints:
            hours = spec.hours[t]
            disp = motion[t].lattice_displacements(lattice)
            largest = max(np.abs(disp["inv_ct"]).max(), np.abs(disp["inv_spect"]).max())
            margin = float(largest) + 2 * anat.grid.spacing[0]  # lookups beyond the body box + motion are air
            box = (a_lo - margin, a_hi + margin)
            for kind in ("spect", "ct"):
                u = FieldSampler(disp[f"fwd_{kind}"], lattice, spect).full() / spacing
                saver.save(field_image(u, aff), truth / f"field_{kind}_{t}.nii.gz")
            frame = FrameCodes(anat, spect, disp["inv_spect"], lattice, box)
            saver.save(nifti(anat.table.label[frame.center], aff), truth / f"labels_{t}.nii.gz")
            lut = anat.table.lut({k: float(c(hours)) for k, c in curves.items()})
            saver.save(nifti(ref_pv.average(lut), aff), truth / f"activity_{t}.nii.gz")
            pv_t = frame.average(lut)
            rng_noise = np.random.default_rng(noise_seeds[t])
            img = spect_image(pv_t, spect, spec.fwhm_mm, spec.postfilter_fwhm_mm, spec.counts_per_bq, rng_noise)
            saver.save(nifti(img, aff), folder / f"spect_{t}.nii.gz")
            ct_grid = geo.ct[t]
            codes = lookup_codes(anat, ct_grid, disp["inv_ct"], lattice, box)[0]
            saver.save(nifti(ct_image(codes, anat.table.hu, spec.ct_noise_hu, rng_noise), ct_grid.affine),
                       folder / f"ct_{t}.nii.gz")
            entries.append({"id": t, "hours": hours, "ct": f"ct_{t}.nii.gz", "spect": f"spect_{t}.nii.gz"})
            motion_info[t] = motion[t].describe(probe)
        tia = ref_pv.average(anat.table.lut({k: c.tia() / 1e6 for k, c in curves.items()}))
        saver.save(nifti(tia, aff), truth / "tia.nii.gz")
        saver.save(nifti(blur(tia, spec.fwhm_mm, spect), aff), truth / "tia_imaged.nii.gz")
    finally:
        saver.wait()

    injected_mbq = round(injected_gbq * 1000.0, 1)
    write_json(truth / "tia_voi.json", voi_summary(anat, curves, labels_ref, spect, injected_mbq, spec.reference))
    write_json(truth / "phantom.json", {
        "generator_version": GENERATOR_VERSION, "cohort": spec.name, "index": index, "seed": seed,
        "downsample": ds, "anatomy": {**anat.params, "anatomy_grid_mm": geo.anatomy_spacing_mm},
        "tumours": [tumour_summary(t) for t in anat.tumours],
        "motion": motion_info,
        "spect": {"shape": list(spect.shape), "spacing_mm": list(spect.spacing), "fwhm_mm": spec.fwhm_mm,
                  "postfilter_fwhm_mm": spec.postfilter_fwhm_mm, "counts_per_bq": spec.counts_per_bq},
        "ct": {t: {"shape": list(g.shape), "spacing_mm": list(g.spacing)} for t, g in geo.ct.items()},
        "fields": {"storage": "int16 with scl_slope", "scl_slope_voxel": FIELD_SCALE,
                   "convention": "pull-back, voxels of the reference SPECT grid, channels (i, j, k)"},
    })
    write_json(folder / "patient.json", {
        "patient_id": pid, "radionuclide": "Lu-177", "injected_activity_mbq": injected_mbq,
        "reference": spec.reference, "timepoints": entries, "labels": "truth/labels_ref.nii.gz",
        "phantom": {"cohort": spec.name, "index": index, "seed": seed, "downsample": ds,
                    "truth": "truth/phantom.json"},
    })


def generate_cohort(out_dir: str | Path, cohort: str = "internal", patients: int = 4, seed: int = 0,
                    protocol: str | None = None, downsample: int = 1, overwrite: bool = False,
                    workers: int = 1) -> Path:
    """Generate a cohort into OUT (patient folders, cohort.json, datalist.json) and return OUT.

    ``workers`` > 1 builds that many patients at once in separate processes (same images: every patient has its
    own seed).
    """
    return _run_cohort(out_dir, cohort, patients, seed, protocol, downsample, overwrite, workers)[0]


def _timed_patient(out: Path, cohort: str, index: int, seed: int, ds: int, n_timepoints: int,
                   overwrite: bool) -> float:
    t0 = time.perf_counter()
    generate_patient(out, cohort, index, seed, ds, n_timepoints, overwrite=overwrite)
    return time.perf_counter() - t0


def _run_cohort(out_dir: str | Path, cohort: str, patients: int, seed: int, protocol: str | None,
                downsample: int, overwrite: bool, workers: int = 1) -> tuple[Path, dict[str, Any]]:
    spec = get_cohort(cohort)
    ds = check_downsample(downsample)
    plans = plan_cohort(cohort, patients, seed, protocol)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if not overwrite:
        taken = [p.patient_id for p in plans if is_nonempty_dir(out / p.patient_id)]
        taken += [name for name in ("cohort.json", "datalist.json") if (out / name).exists()]
        if taken:
            raise FileExistsError(f"{out}: already contains {', '.join(taken[:5])}"
                                  f"{' ...' if len(taken) > 5 else ''} (use overwrite=True or --overwrite to replace)")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, cohort, p.index, seed, ds, len(p.timepoints), overwrite) for p in plans]
    if workers == 1:
        seconds = [_timed_patient(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            seconds = list(pool.map(_timed_patient, *zip(*jobs, strict=True)))
    datalist = build_datalist(cohort, plans)
    summary = {
        "cohort": spec.name, "seed": seed, "patients": len(plans), "protocol": protocol, "downsample": ds,
        "generator_version": GENERATOR_VERSION, "spec": spec.to_dict(),
        "pairs": {k: len(v) for k, v in datalist.items()},
        "patient_list": [{"patient_id": p.patient_id, "timepoints": list(p.timepoints), "split": p.split}
                         for p in plans],
        "seconds_per_patient": round(float(np.mean(seconds)), 2),
    }
    write_json(out / "datalist.json", datalist)
    write_json(out / "cohort.json", summary)
    return out, summary


def run_phantom(out: str | Path, cohort: str = "internal", patients: int = 4, seed: int = 0,
                protocol: str | None = None, downsample: int = 1, overwrite: bool = False, workers: int = 1) -> Path:
    """CLI entry (`corx phantom`): generate the cohort and print a short summary."""
    t0 = time.perf_counter()
    path, s = _run_cohort(out, cohort, patients, seed, protocol, downsample, overwrite, workers)
    n3 = sum(len(p["timepoints"]) < len(get_cohort(cohort).timepoints) for p in s["patient_list"])
    print(f"phantom {s['cohort']}: {s['patients']} patients ({n3} with a missing time point) -> {path}")
    print(f"pairs: {s['pairs']['training']} training / {s['pairs']['validation']} validation "
          f"(datalist.json); {s['seconds_per_patient']:.1f} s per patient, "
          f"{time.perf_counter() - t0:.1f} s in all")
    return path

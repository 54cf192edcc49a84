"""`corx pipeline`: register every time point to the reference, then TIA, dose, VOI table, figures and report.

All outputs lie on the reference time point's SPECT grid (its shape and affine). See README "Pipeline" for the
file list (:data:`OUTPUTS`) and :mod:`corx.pipeline.staging` for how the output folder is written.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from tqdm import tqdm

from corx_bundle.scripts.allocator import release_freed_memory
from corx_bundle.scripts.fieldops import jacobian_determinant

from .. import __version__
from ..dosimetry.bed import load_radiobiology
from ..dosimetry.dose import parse_dose_mode
from ..dosimetry.voi import Voi, default_vois, label_names_from_json, phantom_vois
from ..dosimetry.workflow import (
    DEFAULT_DOSE_MODE,
    TiaOutputs,
    dicom_content,
    prior_half_life_map,
    run_tia_on_arrays,
    voxel_volume_ml,
    write_maps,
    write_summary,
)
from ..dosimetry.workflow import OUTPUT_NAMES as TIA_OUTPUT_NAMES
from ..errors import CorxError
from ..geometry.displacement import (
    CT_OUTSIDE_HU,
    itk_displacement_image,
    voxel_field,
    warp_to_reference,
    world_displacement,
)
from ..geometry.warp import field_to_nifti
from ..io.concurrency import SideProcess, concurrently, side_process_wanted, submit
from ..io.dicom import study_uids
from ..io.dicom_outputs import DICOM_WRITER_MODULES, write_dicom_outputs
from ..io.inputs import labels_on_grid, read_volume
from ..io.manifest import Manifest, TimePoint, load_manifest
from ..io.volume import Volume
from ..registration.backends import (
    DEFAULT_CHECKPOINT,
    Backend,
    BackgroundBackend,
    inprocess_checkpoint,
    make_backend,
)
from ..registration.methods import (
    METHODS,
    ElastixMethod,
    GridField,
    IdentityMethod,
    Method,
    NetworkMethod,
    PairInput,
    ReferenceCache,
    RefineOptions,
    refine_grid_field,
)
from ..registration.preprocess import PreprocessConfig
from ..registration.refine import DEFAULT_COARSEN, preload_refinement
from ..registration.register import check_backend_shape
from ..report.figures import FigureData, preload_plotting, render_all
from ..report.hotspot import hot_spot, parse_point
from ..report.html import render_report
from .staging import COMPLETE, Staging, check_out_dir, remove_stale_partials
from .steps import Steps
from .truth import compare_with_truth, imaged_truth, tia_inside, truth_applies, truth_csv, truth_voi_mask

UNTRAINED_WARNING = ("untrained network: the registration is near identity (freshly initialised CoRX-NET weights; "
                     "no trained model at bundle/models/model.pt)")
PROTOCOLS = ("http", "grpc")
PRECISIONS = ("fp32", "bf16")

#: every output, relative to DIR (``<id>`` = each time point id); all images on the reference SPECT grid
OUTPUTS: dict[str, str] = {
    "tia.nii.gz": "eq.-6 TIA, MBq*h/mL (as `corx tia`)",
    "tia_rmse.nii.gz": "mono-exponential fit RMSE, Bq/mL",
    "tia_sd.nii.gz": "TIA standard deviation from the fit, MBq*h/mL (NaN where not fitted)",
    "tia_rule.nii.gz": "eq.-6 rule per voxel (uint8 codes, see corx.dosimetry.tia)",
    "dose.nii.gz": "absorbed dose, Gy, by --dose: 'dvk' kernel convolution (default) or 'led' local deposition "
                   "(mass from the reference CT)",
    "dose_led.nii.gz": "(--dose dvk) the LED dose, Gy, for comparison",
    "dose_dvk.nii.gz": "(--dose led) the kernel dose, Gy, for comparison",
    "tia_model.nii.gz": "(>= 4 time points) selected kinetic model (uint8)",
    "tia_multimodel.nii.gz": "(>= 4 time points) multi-model TIA, MBq*h/mL",
    "voi.csv": "(labels given) VOI table: VOI TIA vs voxel sum, dose metrics",
    "tia_summary.json": "TIA parameters, rule counts, VOI rows (as `corx tia`)",
    "dose.dcm": "(dicom extra installed) RT Dose of dose.nii.gz, Gy, DoseGridScaling; the reference CT's study and "
                "frame of reference when it is DICOM",
    "voi_seg.dcm": "(dicom extra, labels given) DICOM Segmentation of the VOIs",
    "voi_rtstruct.dcm": "(dicom extra, labels given) RT Structure Set: the VOIs as closed planar contours on the "
                        "dose planes (for DVH tools and treatment-planning systems)",
    "registered/ct_<id>.nii.gz": "registered CT, HU (int16; -1000 outside the CT's field of view)",
    "registered/spect_<id>.nii.gz": "registered SPECT, Bq/mL (float32)",
    "registered/patient.json": "manifest of the registered images (input for `corx tia`)",
    "registered/labels_ref.nii.gz": "(labels given) the label map on the reference grid, for that manifest",
    "fields/field_<id>.nii.gz": "displacement, voxels of the reference grid, (X, Y, Z, 3), corx convention",
    "fields/field_itk_<id>.nii.gz": "displacement, mm, (X, Y, Z, 1, 3), intent 1006: ITK reads it as its LPS "
                                    "displacement field",
    "fields/jacobian_<id>.nii.gz": "Jacobian determinant of the displacement (<= 0: folding)",
    "truth_comparison.csv": "(phantom truth present) TIA per VOI vs the true TIA",
    "figures/*.png": "report figures",
    "report.html": "the report",
    "pipeline.json": "summary: method, per-time-point statistics, point, timings, truth comparison",
    "COMPLETE": "written last: the results are complete; sizes and SHA-256 of every file",
}
MANAGED = tuple(sorted({*TIA_OUTPUT_NAMES, "registered", "fields", "figures", "report.html", "pipeline.json",
                        "truth_comparison.csv"}))


@dataclass
class PipelineResult:
    """Where the results went and the summary written to pipeline.json."""

    out: Path
    report: Path
    summary: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    cpu_timings_s: dict[str, float] = field(default_factory=dict)  # per step: CPU seconds of this process
    side_peak_rss_mib: float | None = None  # the side process's memory high-water mark (None: no side process)


@dataclass
class _TimePointResult:
    ct_before: np.ndarray
    ct_after: np.ndarray
    spect_before: np.ndarray
    spect_after: np.ndarray
    disp_mm: np.ndarray
    jacobian: np.ndarray
    stats: dict[str, Any]


def _check_options(method: str | Method, server: str | None, protocol: str, refine: int,
                   precision: str = "fp32", refine_coarsen: int = DEFAULT_COARSEN) -> None:
    if isinstance(method, str) and method not in METHODS:
        raise CorxError(f"unknown --method {method!r} (choose from {', '.join(METHODS)})")
    if protocol not in PROTOCOLS:
        raise CorxError(f"unknown --protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    if server is not None and method != "corx":
        raise CorxError(f"--server applies to --method corx only, not {method!r}")
    if not isinstance(refine, int) or isinstance(refine, bool) or refine < 0:
        raise CorxError(f"--refine must be a number of steps >= 0, got {refine!r}")
    if precision not in PRECISIONS:
        raise CorxError(f"unknown --precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision != "fp32" and (server is not None or method != "corx"):
        raise CorxError("--precision applies to in-process CoRX-NET only (a Triton model's precision is chosen "
                        "when it is exported)")
    if not isinstance(refine_coarsen, int) or isinstance(refine_coarsen, bool) or refine_coarsen < 1:
        raise CorxError(f"--refine_coarsen must be an integer >= 1, got {refine_coarsen!r}")
    if refine and server is not None:
        raise CorxError("--refine runs test-time optimisation with PyTorch in this process; it cannot be used with "
                        "--server (run without --server, or without --refine)")


def _make_method(method: str | Method, server: str | None, protocol: str, backend: Backend | None,
                 checkpoint: str | None, random_init: bool, config: PreprocessConfig, precision: str = "fp32",
                 threads: int | None = None) -> tuple[Method, str, Backend | None]:
    """The registration method, a description of the network, and a backend this function created."""
    if not isinstance(method, str):
        return method, f"{method.name} (Python API)", None
    if method == "identity":
        return IdentityMethod(), "none (identity)", None
    if method in ("elastix", "elastix-spect"):
        return ElastixMethod("ct" if method == "elastix" else "spect"), f"{method} (itk-elastix)", None
    created = None
    if backend is None:
        if server is not None:
            backend = created = make_backend(protocol, url=server)
            what = f"CoRX-NET on Triton at {server} ({protocol})"
        else:
            inprocess_checkpoint(checkpoint, random_init)  # missing torch or weights: refused now, not later
            backend = created = BackgroundBackend(lambda: make_backend(
                "inprocess", checkpoint=checkpoint, random_init=random_init, precision=precision, threads=threads))
            what = ("CoRX-NET in-process, freshly initialised weights (untrained)" if random_init else
                    f"CoRX-NET in-process, weights {checkpoint or DEFAULT_CHECKPOINT}") + f", {precision}"
    else:
        what = f"CoRX-NET, {type(backend).__name__}" + (" (untrained)" if random_init else "")
    check_backend_shape(backend, config)
    return NetworkMethod(backend), what, created


def _writer_modules() -> tuple[str, ...]:
    """What the side process imports as it starts: the writers, and pydicom/highdicom where installed."""
    extra = tuple(name for name in ("pydicom", "highdicom") if importlib.util.find_spec(name) is not None)
    return DICOM_WRITER_MODULES + extra


def _input_paths(m: Manifest) -> list[Path]:
    paths = [m.path]
    for tp in m.timepoints:
        paths += [tp.ct, tp.spect]
    if m.labels is not None:
        paths.append(m.labels)
    return paths


def _vois(m: Manifest, labels: np.ndarray) -> list[Voi]:
    names_file = m.truth_dir / "tia_voi.json"
    names = label_names_from_json(names_file) if names_file.is_file() else None
    return phantom_vois(labels, names) if names else default_vois(labels)


def _grid_text(shape: tuple[int, ...], affine: np.ndarray) -> str:
    spacing = voxel_sizes(affine)
    return (f"{'x'.join(map(str, shape))} at {'/'.join(f'{s:.3g}' for s in spacing)} mm, "
            f"{''.join(nib.aff2axcodes(affine))}")


def step_plan(m: Manifest, refine: int) -> list[str]:
    """The names of a run's steps, in the order :func:`run_pipeline` runs them (the progress bar's total)."""
    plan = ["read reference"]
    for tp in m.timepoints:
        if tp.id != m.reference:
            plan += [f"register {tp.id}"] + ([f"refine {tp.id}"] if refine else [])
        plan.append(f"resample {tp.id}")
    plan += ["registered manifest", "TIA, dose, VOI"]
    if truth_applies(m.truth_dir, m.reference):
        plan.append("truth comparison")
    return [*plan, "figures", "report", "publish"]


class _Run:
    """One pipeline run: the state shared by the steps; creating it reads the reference (step "read reference")."""

    def __init__(self, m: Manifest, staging: Staging, steps: Steps, method: Method, config: PreprocessConfig,
                 refine: RefineOptions | None, warn: Callable[[str], None], point: object = None,
                 side: SideProcess | None = None) -> None:
        self.m, self.staging, self.steps, self.method = m, staging, steps, method
        self.side = side  # writes the TIA outputs (pure-Python DICOM work) beside the figures, on the other core
        self.config, self.refine = config, refine
        self.warn = warn  # input problems found on the way (e.g. negative SPECT voxels set to 0): console + report
        self.results: dict[str, _TimePointResult] = {}
        self.prepare = ReferenceCache(config)  # the reference pair is preprocessed once for every pair
        self.network_s: list[float] = []  # the network's share of each registration, where the method has one
        self._reads: dict[str, Future[tuple[Volume, Volume]]] = {}
        self._truth_inputs: Future[tuple[np.ndarray, np.ndarray, np.ndarray] | None] | None = None
        ref = m.reference_timepoint
        self._prefetch_next()  # the first moving time point is read beside the reference
        with steps.step("read reference", file=ref.spect):
            self.ref_spect = read_volume(ref.spect, "spect", ref.calibration_bq_per_count, warn=warn)
            self.ref_ct = read_volume(ref.ct, "ct")
            self.shape = tuple(int(s) for s in self.ref_spect.data.shape)
            self.affine = np.asarray(self.ref_spect.affine, dtype=np.float64)
            self.labels = labels_on_grid(m.labels, self.shape, self.affine) if m.labels else None
            self.vois = _vois(m, self.labels) if self.labels is not None else None
            self.point, self.point_how = ((parse_point(point, self.shape), "given with --point") if point is not None
                                          else hot_spot(self.ref_spect.data, self.affine, self.labels))
            self.ct_ref_grid = warp_to_reference(self.ref_ct.data, self.ref_ct.affine, self.shape, self.affine,
                                                 None, outside=CT_OUTSIDE_HU)
            self.ref_spect_grid = self.ref_spect.data.astype(np.float32, copy=True)
            self.body = self.ct_ref_grid > -500.0
        submit(preload_plotting)  # the figures come last; their imports need not wait until then
        if self.refine is not None:
            submit(preload_refinement)  # MONAI's loss modules (~3 s to import), before the first refinement

    def register(self, tp: TimePoint) -> tuple[GridField | None, Volume, Volume, dict[str, Any] | None]:
        if tp.id == self.m.reference:
            return None, self.ref_ct, self.ref_spect, None
        with self.steps.step(f"register {tp.id}", file=tp.spect):
            ct, spect = self._read(tp).result()
            self._prefetch_next()
            pair = PairInput.from_volumes(self.ref_ct, ct, self.ref_spect, spect, self.prepare)
            gf = self.method.register(pair)
            if "network_seconds" in gf.info:
                self.network_s.append(float(gf.info["network_seconds"]))
        refined = None
        if self.refine is not None:
            with self.steps.step(f"refine {tp.id}", file=tp.spect):
                gf = refine_grid_field(pair, gf, self.refine)
                refined = {k: gf.info[f"refine_{k}"] for k in ("steps", "loss_before", "loss_after", "coarsen")}
        return gf, ct, spect, refined

    def resample(self, tp: TimePoint, gf: GridField | None, ct: Volume, spect: Volume,
                 refined: dict[str, Any] | None) -> None:
        with self.steps.step(f"resample {tp.id}", file=tp.spect):
            shape, affine = self.shape, self.affine
            disp = (np.zeros((3, *shape), np.float32) if gf is None
                    else world_displacement(gf.field, gf.affine, shape, affine))
            u = voxel_field(disp, affine)
            # independent interpolations run at once (scipy releases the GIL); the reference's resampled images
            # were made when it was read; without a displacement the registered images are the resampled ones
            work: dict[str, Callable[[], np.ndarray]] = {
                # the reference's zero field maps every voxel to itself: its Jacobian determinant is 1
                "jacobian": ((lambda: np.ones(shape, np.float32)) if gf is None
                             else lambda: jacobian_determinant(u).astype(np.float32, copy=False))}
            if tp.id != self.m.reference:
                work["spect_before"] = lambda: self._on_grid(spect, 0.0)
                work["ct_before"] = lambda: self._on_grid(ct, CT_OUTSIDE_HU)
            moved = bool(np.any(disp))
            if moved:
                work["spect_after"] = lambda: self._on_grid(spect, 0.0, disp)
                work["ct_after"] = lambda: self._on_grid(ct, CT_OUTSIDE_HU, disp)
            done = {"spect_before": self.ref_spect_grid, "ct_before": self.ct_ref_grid,
                    **dict(zip(work, concurrently(*work.values()), strict=True))}
            jac, spect_before, ct_before = done["jacobian"], done["spect_before"], done["ct_before"]
            spect_after = done["spect_after"] if moved else spect_before
            ct_after = done["ct_after"] if moved else ct_before
            norm = np.sqrt((disp.astype(np.float64) ** 2).sum(axis=0))
            stats: dict[str, Any] = {
                "id": tp.id, "hours": tp.hours, "max_disp_mm": float(norm.max()),
                "mean_disp_mm": float(norm[self.body].mean()) if self.body.any() else float(norm.mean()),
                "nonpositive_jacobian_percent": 100.0 * float(np.mean(jac <= 0)),
                "jacobian_min": float(jac.min()), "jacobian_max": float(jac.max()),
                "ct": str(tp.ct), "spect": str(tp.spect),
            }
            if refined:
                stats["refine"] = refined
            st = self.staging
            ct_int = np.clip(np.rint(ct_after), -32768, 32767).astype(np.int16)
            st.image(f"registered/ct_{tp.id}.nii.gz", ct_int, affine, dtype=np.int16)
            st.image(f"registered/spect_{tp.id}.nii.gz", spect_after, affine, dtype=np.float32)
            st.image(f"fields/field_{tp.id}.nii.gz", field_to_nifti(u), affine, dtype=np.float32)
            st.nifti(f"fields/field_itk_{tp.id}.nii.gz", itk_displacement_image(disp, affine))
            st.image(f"fields/jacobian_{tp.id}.nii.gz", jac, affine, dtype=np.float32)
            self.results[tp.id] = _TimePointResult(ct_before, ct_after, spect_before, spect_after, disp, jac, stats)

    def _read(self, tp: TimePoint) -> Future[tuple[Volume, Volume]]:
        """The (CT, SPECT) of ``tp``, read on a worker thread (gzip releases the GIL), once."""
        if tp.id not in self._reads:
            self._reads[tp.id] = submit(lambda: (read_volume(tp.ct, "ct"), read_volume(
                tp.spect, "spect", tp.calibration_bq_per_count, warn=self.warn)))
        return self._reads[tp.id]

    def _prefetch_next(self) -> None:
        """Start reading the next moving time point not yet asked for, while the current one is processed."""
        waiting = [t for t in self.m.timepoints if t.id != self.m.reference and t.id not in self._reads]
        if waiting:
            self._read(waiting[0])

    def _on_grid(self, vol: Volume, outside: float, disp_mm: np.ndarray | None = None) -> np.ndarray:
        """``vol`` sampled on the reference SPECT grid, displaced by ``disp_mm`` (world mm) when given."""
        return warp_to_reference(vol.data, vol.affine, self.shape, self.affine, disp_mm, outside=outside)

    def write_registered_manifest(self) -> None:
        with self.steps.step("registered manifest"):
            self._write_registered_manifest()

    def _write_registered_manifest(self) -> None:
        m = self.m
        entries = [{"id": tp.id, "hours": tp.hours, "ct": f"ct_{tp.id}.nii.gz", "spect": f"spect_{tp.id}.nii.gz"}
                   for tp in m.timepoints]
        registered: dict[str, Any] = {
            "patient_id": m.patient_id, "radionuclide": m.radionuclide,
            "injected_activity_mbq": m.injected_activity_mbq, "reference": m.reference, "timepoints": entries,
            "registered_on": "reference SPECT grid", "source_manifest": str(m.path)}
        if m.labels is not None and self.labels is not None:
            labels_file = self.staging.image("registered/labels_ref.nii.gz", self.labels, self.affine,
                                             dtype=np.int16 if self.labels.max() > 255 else np.uint8)
            registered["labels"] = labels_file.name
        self.staging.json("registered/patient.json", registered)

    def tia(self, threads: int | None, radiobiology: str | os.PathLike | None = None,
            dose_mode: str = DEFAULT_DOSE_MODE) -> TiaOutputs:
        with self.steps.step("TIA, dose, VOI"):
            ids = [tp.id for tp in self.m.timepoints]
            activity = np.stack([self.results[t].spect_after for t in ids])
            result = run_tia_on_arrays(activity, self.m.hours, self.affine, ct=(self.ref_ct.data, self.ref_ct.affine),
                                       labels=self.labels, vois=self.vois,
                                       names=[f"registered SPECT {t}" for t in ids], threads=threads,
                                       radiobiology=radiobiology, prior_half_life_h=self.m.prior_half_life_h,
                                       dose_mode=dose_mode, calibration_sd_percent=self.m.calibration_sd_percent)
            extra = {"patient_id": self.m.patient_id, "manifest": str(self.m.path), "reference": self.m.reference,
                     "timepoints": ids, "reference_ct": str(self.m.reference_timepoint.ct),
                     "labels": str(self.m.labels) if self.m.labels else None, "registered_by": "corx pipeline"}
            uids = study_uids(self.m.reference_timepoint.ct)

            def write() -> None:
                root = self.staging.root
                dicom_args = (dicom_content(result), self.affine, root, self.m.patient_id, uids)
                # the DICOM files (pure Python) in the side process, the maps (gzip releases the GIL) here
                dicom_job = self.side.submit(write_dicom_outputs, *dicom_args) if self.side is not None else None
                maps = write_maps(result, self.affine, root)
                dicom = dicom_job.result() if dicom_job is not None else write_dicom_outputs(*dicom_args)
                for path in write_summary(result, root, maps, dicom, extra=extra, dicom_uids=uids):
                    self.staging.adopt(path.name)

            self.staging.later(write)  # maps, DICOM and tables are written while the figures are drawn
        return result

    def start_truth(self) -> None:
        """Start making what the truth comparison needs besides our TIA (the unregistered TIA inside the truth's
        VOIs, the imaged truth on the grid) on a worker thread: numpy work, beside the TIA fits' partly idle core.
        Its errors are raised in the "truth comparison" step."""
        if truth_applies(self.m.truth_dir, self.m.reference):
            self._truth_inputs = submit(self._make_truth_inputs)

    def _make_truth_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(labels, unregistered TIA, imaged truth) on the reference grid; None without a label map."""
        truth_dir = self.m.truth_dir
        labels = self.labels
        if labels is None and (truth_dir / "labels_ref.nii.gz").is_file():
            labels = labels_on_grid(truth_dir / "labels_ref.nii.gz", self.shape, self.affine)
        if labels is None:
            return None
        ids = [tp.id for tp in self.m.timepoints]
        prior = prior_half_life_map(self.m.prior_half_life_h, self.labels, self.vois)
        # without registration: fitted only where the comparison reads it (a quarter of a phantom's grid)
        unreg = tia_inside([self.results[t].spect_before for t in ids], self.m.hours,
                           voxel_volume_ml(self.affine), truth_voi_mask(truth_dir, labels), prior)
        return labels, unreg, imaged_truth(truth_dir, self.shape, self.affine)

    def truth(self, result: TiaOutputs) -> tuple[list[dict[str, Any]], np.ndarray | None]:
        truth_dir = self.m.truth_dir
        if not truth_applies(truth_dir, self.m.reference):
            return [], None
        with self.steps.step("truth comparison", file=truth_dir):
            inputs = (self._truth_inputs.result() if self._truth_inputs is not None
                      else self._make_truth_inputs())
            if inputs is None:
                return [], None
            labels, unreg, true_tia = inputs
            rows = compare_with_truth(truth_dir, labels, self.shape, self.affine,
                                      result.tia.tia_mbqh_per_ml, unreg, imaged=true_tia)
            if rows:
                self.staging.text("truth_comparison.csv", truth_csv(rows))
        return rows, true_tia

    def figures(self, result: TiaOutputs, method: str, true_tia: np.ndarray | None) -> list[str]:
        with self.steps.step("figures"):
            ids = [tp.id for tp in self.m.timepoints]
            r = self.results
            data = FigureData(
                patient_id=self.m.patient_id, method=method, reference=self.m.reference, ids=ids,
                hours=[tp.hours for tp in self.m.timepoints], affine=self.affine, point=self.point,
                ct_before={t: r[t].ct_before for t in ids}, ct_after={t: r[t].ct_after for t in ids},
                spect_before={t: r[t].spect_before for t in ids}, spect_after={t: r[t].spect_after for t in ids},
                disp_mm={t: r[t].disp_mm for t in ids}, jacobian={t: r[t].jacobian for t in ids},
                tia=result.tia.tia_mbqh_per_ml, rmse=result.tia.rmse_bq_per_ml, rule=result.tia.rule,
                dose=result.dose.dose_gy if result.dose else None, true_tia=true_tia, dvh=result.dvh)
            paths = render_all(data, self.staging.path("figures"))
            rels = [f"figures/{p.name}" for p in paths]
            for rel in rels:
                self.staging.adopt(rel)
        return rels


def run_pipeline(manifest: str | os.PathLike | Manifest, out: str | os.PathLike, *, method: str | Method = "corx",
                 server: str | None = None, protocol: str = "http", refine: int = 0, refine_lr: float | None = None,
                 overwrite: bool = False, backend: Backend | None = None, config: PreprocessConfig | None = None,
                 checkpoint: str | None = None, random_init: bool = False, point: object = None,
                 threads: int | None = None, progress: bool = True, quiet: bool = False,
                 warnings: Sequence[str] = (), radiobiology: str | os.PathLike | None = None,
                 dose_mode: str = DEFAULT_DOSE_MODE, precision: str = "fp32",
                 refine_coarsen: int = DEFAULT_COARSEN) -> PipelineResult:
    """Run the whole pipeline for one patient into ``out`` (see the module and README "Pipeline").

    ``method`` is a name (:data:`corx.registration.methods.METHODS`) or a :class:`~corx.registration.methods.Method`
    object. ``backend`` (e.g. a small ``TorchBackend`` with a matching ``config``) replaces the one made from
    ``server``/``protocol``/``checkpoint``/``random_init``; ``random_init`` marks the run as untrained (warning in
    console and report). ``point`` "i,j,k" overrides the profile point. Raises CorxError naming the failed step
    and file; nothing is published then.
    """
    t_start = time.perf_counter()
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    out = Path(out)
    _check_options(method, server, protocol, refine, precision, refine_coarsen)
    load_radiobiology(radiobiology)  # a bad parameter file or option fails now, not after the registration
    dose_mode = parse_dose_mode(dose_mode)
    check_out_dir(out, overwrite, MANAGED, _input_paths(m))
    cfg = config or PreprocessConfig()
    all_warnings = list(warnings)
    if method == "corx" and random_init and UNTRAINED_WARNING not in all_warnings:
        all_warnings.append(UNTRAINED_WARNING)
    t_load = time.perf_counter()
    reg, network, created = _make_method(method, server, protocol, backend, checkpoint, random_init, cfg,
                                         precision, threads)
    t_load = time.perf_counter() - t_load
    method_name = method if isinstance(method, str) else reg.name
    refine_options = RefineOptions(refine, refine_lr, refine_coarsen) if refine else None
    if not quiet:
        for w in all_warnings:
            print(f"\n{'!' * 100}\nWARNING: {w}\n{'!' * 100}\n", flush=True)
    if overwrite:
        remove_stale_partials(out)
    staging = Staging(out, MANAGED)
    steps = Steps(step_plan(m, refine), progress=progress and not quiet)
    steps.timings["load method"] = t_load
    had_complete = (out / COMPLETE).exists()
    side: SideProcess | None = None
    side_rss: float | None = None
    try:
        def warn(message: str) -> None:
            all_warnings.append(message)
            if not quiet:
                tqdm.write(f"WARNING: {message}", file=sys.stderr)

        side = SideProcess(_writer_modules()) if side_process_wanted() else None
        run = _Run(m, staging, steps, reg, cfg, refine_options, warn, point, side)
        for tp in m.timepoints:
            run.resample(tp, *run.register(tp))
        release_freed_memory()  # the network's heap (kept for speed while it ran) goes back to the kernel
        run.write_registered_manifest()
        run.start_truth()
        result = run.tia(threads, radiobiology, dose_mode)
        truth_rows, true_tia = run.truth(result)
        figures = run.figures(result, method_name, true_tia)
        with steps.step("report"):
            summary = _summary(run, result, method_name, network, all_warnings, truth_rows, steps.timings, t_start)
            staging.json("pipeline.json", summary)
            staging.text("report.html", render_report(summary, figures))
        with steps.step("publish", file=out):
            staging.commit({"patient_id": m.patient_id, "method": method_name, "corx_version": __version__,
                            "manifest": str(m.path)})
        side_rss = side.peak_rss_mib() if side is not None else None
    except BaseException as exc:
        staging.discard()
        if isinstance(exc, CorxError):
            kept = " (the earlier complete results there are unchanged)" if had_complete else ""
            raise CorxError(f"{exc}; no results were published to {out}{kept}") from exc
        raise
    finally:
        steps.close()
        if side is not None:
            side.close()
        if created is not None:
            created.close()
    timings = dict(steps.timings)
    timings["total"] = time.perf_counter() - t_start
    res = PipelineResult(out=out, report=out / "report.html", summary=summary, timings_s=timings,
                         cpu_timings_s=dict(steps.cpu_timings), side_peak_rss_mib=side_rss)
    if not quiet:
        print_summary(res)
    return res


def _summary(run: _Run, result: TiaOutputs, method: str, network: str, warnings: list[str],
             truth_rows: list[dict[str, Any]], timings: dict[str, float], t_start: float) -> dict[str, Any]:
    m = run.m
    total = float(result.tia.tia_mbqh.sum(dtype=np.float64))
    notes = []
    if method == "identity":
        notes.append("--method identity: no registration; every time point is only resampled onto the reference "
                     "SPECT grid (the baseline).")
    return {
        "patient_id": m.patient_id, "manifest": str(m.path), "method": method, "network": network,
        "warnings": warnings, "notes": notes, "reference": m.reference, "version": __version__,
        "injected_activity_mbq": m.injected_activity_mbq,
        "grid": {"shape": list(run.shape), "affine": run.affine.tolist(),
                 "description": _grid_text(run.shape, run.affine)},
        "point": {"voxel": list(run.point), "how": run.point_how,
                  "world_ras_mm": (run.affine[:3, :3] @ np.array(run.point, float) + run.affine[:3, 3]).tolist()},
        "timepoints": [run.results[tp.id].stats for tp in m.timepoints],
        "tia": {"total_mbqh": total, "total_over_injected_h": total / m.injected_activity_mbq,
                "rule_counts": result.tia.rule_counts()},
        "dose": {"max_gy": float(result.dose.dose_gy.max()), "mode": result.dose.mode} if result.dose else {},
        "voi": result.voi_rows or [], "truth": truth_rows,
        "timings_s": {**timings, **{f"tia: {k}": v for k, v in result.timings_s.items()}},
        "total_s": time.perf_counter() - t_start, "outputs": OUTPUTS,
        "network_forward_s": float(sum(run.network_s)) if run.network_s else None,
    }


def print_summary(res: PipelineResult) -> None:
    """A short console summary of a finished run."""
    s = res.summary
    ids = ", ".join(t["id"] + (" (ref)" if t["id"] == s["reference"] else "") for t in s["timepoints"])
    print(f"patient {s['patient_id']}: {len(s['timepoints'])} time points ({ids}); method {s['method']}: "
          f"{s['network']}; grid {s['grid']['description']}")
    for t in s["timepoints"]:
        if t["id"] != s["reference"]:
            extra = (f", refinement loss {t['refine']['loss_before']:.4g} -> {t['refine']['loss_after']:.4g}"
                     if t.get("refine") else "")
            print(f"  {t['id']:>6}: max |d| {t['max_disp_mm']:.2f} mm, mean |d| in body {t['mean_disp_mm']:.2f} mm, "
                  f"Jacobian <= 0: {t['nonpositive_jacobian_percent']:.2f} %{extra}")
    tia = s["tia"]
    dose = f", max dose {s['dose']['max_gy']:.3g} Gy" if s.get("dose") else ""
    print(f"TIA: total {tia['total_mbqh']:.4g} MBq*h ({tia['total_over_injected_h']:.3g} h x injected){dose}")
    for row in s.get("truth", [])[:12]:
        unreg = row.get("unregistered_error_vs_imaged_percent")
        extra = f" (no registration {unreg:+.1f} %)" if unreg is not None else ""
        print(f"  vs truth {row['voi']:<14} {row['error_vs_imaged_percent']:+6.1f} % vs imaged truth{extra}, "
              f"voxel MAE {row['voxel_mae_percent']:.1f} %")
    grouped: dict[str, float] = {}
    for k, v in res.timings_s.items():
        if not k.startswith("tia: ") and k != "total":
            key = k.split()[0] if k.split()[0] in ("register", "refine", "resample") else k
            grouped[key] = grouped.get(key, 0.0) + v
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in grouped.items())
    print(f"timings: {steps}; total {res.timings_s['total']:.1f} s")
    print(f"report: {res.report}")


def pipeline_command(manifest: str, out: str, method: str = "corx", server: str | None = None,
                     protocol: str = "http", refine: int = 0, checkpoint: str | None = None,
                     random_init: bool = False, point: object = None, overwrite: bool = False,
                     radiobiology: str | None = None, dose: str = DEFAULT_DOSE_MODE,
                     precision: str = "fp32", refine_coarsen: int = DEFAULT_COARSEN) -> PipelineResult:
    """The `corx pipeline` command line."""
    return run_pipeline(manifest, out, method=method, server=server, protocol=protocol, refine=refine,
                        overwrite=overwrite, checkpoint=checkpoint, random_init=random_init, point=point,
                        radiobiology=radiobiology, dose_mode=dose, precision=precision,
                        refine_coarsen=refine_coarsen)

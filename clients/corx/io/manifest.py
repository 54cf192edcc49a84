"""The patient manifest: the input contract of every corx command (see README, "Patient manifest")."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorxError
from .imageio import load_image

SUPPORTED_RADIONUCLIDES = ("Lu-177",)


@dataclass(frozen=True)
class TimePoint:
    """One SPECT/CT acquisition: id, hours post-injection and resolved image paths."""

    id: str
    hours: float
    ct: Path
    spect: Path
    #: Bq per count of a DICOM SPECT in counts (see corx.io.dicom); None for images in Bq/mL
    calibration_bq_per_count: float | None = None


@dataclass(frozen=True)
class Manifest:
    """A validated patient manifest with absolute paths."""

    path: Path
    patient_id: str
    radionuclide: str
    injected_activity_mbq: float
    reference: str
    timepoints: tuple[TimePoint, ...]
    labels: Path | None = None
    #: single time point only: prior effective half-life (h) per VOI name, used instead of Hänscheid's T_eff = t
    prior_half_life_h: dict[str, float] = field(default_factory=dict)
    #: relative standard uncertainty (%) of the SPECT calibration factor, for the VOI uncertainty
    #: (corx.dosimetry.uncertainty)
    calibration_sd_percent: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reference_timepoint(self) -> TimePoint:
        return next(tp for tp in self.timepoints if tp.id == self.reference)

    @property
    def hours(self) -> np.ndarray:
        return np.array([tp.hours for tp in self.timepoints], dtype=np.float64)

    @property
    def truth_dir(self) -> Path:
        """Where a phantom keeps its ground truth (may not exist for real patients)."""
        return self.path.parent / "truth"


def load_manifest(path: str | Path, check_images: bool = True) -> Manifest:
    """Read and validate ``patient.json``; every failure raises CorxError naming the file or field."""
    path = Path(path)
    raw = _read_json(path)
    where = str(path)

    def need(key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in raw:
            raise CorxError(f"{where}: missing field '{key}'")
        value = raw[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CorxError(f"{where}: field '{key}' has the wrong type ({type(value).__name__})")
        return value

    patient_id = need("patient_id", str)
    radionuclide = raw.get("radionuclide", "Lu-177")
    if radionuclide not in SUPPORTED_RADIONUCLIDES:
        raise CorxError(f"{where}: radionuclide '{radionuclide}' is not supported "
                        f"(supported: {', '.join(SUPPORTED_RADIONUCLIDES)})")
    injected = float(need("injected_activity_mbq", (int, float)))
    if not math.isfinite(injected) or injected <= 0:
        raise CorxError(f"{where}: 'injected_activity_mbq' must be a positive number, got {injected}")
    reference = need("reference", str)
    entries = need("timepoints", list)
    if not entries:
        raise CorxError(f"{where}: at least 1 time point is needed (2 or more for a fitted TIA), got none")

    base = path.parent
    timepoints = [_parse_timepoint(entry, i, base, where) for i, entry in enumerate(entries)]
    ids = [tp.id for tp in timepoints]
    if len(set(ids)) != len(ids):
        raise CorxError(f"{where}: time point ids must be unique, got {ids}")
    hours = [tp.hours for tp in timepoints]
    if any(b <= a for a, b in itertools.pairwise(hours)):
        raise CorxError(f"{where}: time point hours must be strictly increasing and unique, got {hours}")
    if len(hours) == 1 and hours[0] <= 0:
        raise CorxError(f"{where}: a single time point must be after the injection (hours > 0), got {hours[0]:g}")
    if reference not in ids:
        raise CorxError(f"{where}: reference '{reference}' is not one of the time point ids {ids}")

    labels = None
    if raw.get("labels") is not None:
        if not isinstance(raw["labels"], str):
            raise CorxError(f"{where}: field 'labels' must be a path string")
        labels = (base / raw["labels"]).resolve()

    priors = _parse_priors(raw.get(PRIOR_KEY), len(timepoints), labels, where)
    calibration_sd = raw.get(CALIBRATION_SD_KEY, 0.0)
    if isinstance(calibration_sd, bool) or not isinstance(calibration_sd, (int, float)) or not (
            math.isfinite(calibration_sd) and 0 <= calibration_sd < 100):
        raise CorxError(f"{where}: '{CALIBRATION_SD_KEY}' must be a number of percent in [0, 100), "
                        f"got {calibration_sd!r}")
    manifest = Manifest(path=path.resolve(), patient_id=patient_id, radionuclide=radionuclide,
                        injected_activity_mbq=injected, reference=reference, timepoints=tuple(timepoints),
                        labels=labels, prior_half_life_h=priors, calibration_sd_percent=float(calibration_sd),
                        extra={k: v for k, v in raw.items() if k not in _KNOWN_KEYS})
    if check_images:
        validate_images(manifest)
    return manifest


PRIOR_KEY = "prior_effective_half_life_h"
CALIBRATION_SD_KEY = "calibration_uncertainty_percent"
_KNOWN_KEYS = {"patient_id", "radionuclide", "injected_activity_mbq", "reference", "timepoints", "labels", PRIOR_KEY,
               CALIBRATION_SD_KEY}


def _parse_priors(value: Any, n_timepoints: int, labels: Path | None, where: str) -> dict[str, float]:
    """``{VOI name: hours > 0}`` of the manifest's prior effective half-lives (single time point, with labels)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise CorxError(f"{where}: '{PRIOR_KEY}' must be an object {{VOI name: hours}}")
    if n_timepoints != 1:
        raise CorxError(f"{where}: '{PRIOR_KEY}' is used with a single time point only ({n_timepoints} given: "
                        "with several time points the effective decay is fitted)")
    if labels is None:
        raise CorxError(f"{where}: '{PRIOR_KEY}' needs 'labels' (the VOIs it names)")
    priors = {}
    for name, hours in value.items():
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not math.isfinite(hours) or hours <= 0:
            raise CorxError(f"{where}: '{PRIOR_KEY}' of VOI '{name}' must be a number of hours > 0, got {hours!r}")
        priors[str(name)] = float(hours)
    return priors


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CorxError(f"{path}: manifest not found")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorxError(f"{path}: not a valid JSON manifest ({exc})") from exc
    if not isinstance(raw, dict):
        raise CorxError(f"{path}: the manifest must be a JSON object")
    return raw


def _parse_timepoint(entry: Any, index: int, base: Path, where: str) -> TimePoint:
    ctx = f"{where}: timepoints[{index}]"
    if not isinstance(entry, dict):
        raise CorxError(f"{ctx} must be an object")
    for key in ("id", "hours", "ct", "spect"):
        if key not in entry:
            raise CorxError(f"{ctx}: missing field '{key}'")
    if not isinstance(entry["id"], str) or not entry["id"]:
        raise CorxError(f"{ctx}: 'id' must be a non-empty string")
    hours = entry["hours"]
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not math.isfinite(hours) or hours < 0:
        raise CorxError(f"{ctx} ('{entry['id']}'): 'hours' must be a finite number >= 0, got {hours!r}")
    for key in ("ct", "spect"):
        if not isinstance(entry[key], str):
            raise CorxError(f"{ctx} ('{entry['id']}'): '{key}' must be a path string")
    calibration = entry.get("calibration_bq_per_count")
    if calibration is not None and (isinstance(calibration, bool) or not isinstance(calibration, (int, float))
                                    or not math.isfinite(calibration) or calibration <= 0):
        raise CorxError(f"{ctx} ('{entry['id']}'): 'calibration_bq_per_count' must be a positive number, "
                        f"got {calibration!r}")
    return TimePoint(id=entry["id"], hours=float(hours), ct=(base / entry["ct"]).resolve(),
                     spect=(base / entry["spect"]).resolve(),
                     calibration_bq_per_count=None if calibration is None else float(calibration))


def world_bounds(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounding box (min, max corners, mm) of a grid's voxel centres."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], dtype=np.float64)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def overlap_fraction(shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...],
                     affine_b: np.ndarray) -> float:
    """Fraction of the smaller bounding box covered by the intersection of the two boxes."""
    lo_a, hi_a = world_bounds(shape_a, affine_a)
    lo_b, hi_b = world_bounds(shape_b, affine_b)
    inter = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None).prod()
    smaller = min((hi_a - lo_a).prod(), (hi_b - lo_b).prod())
    return float(inter / smaller) if smaller > 0 else 0.0


def validate_images(manifest: Manifest, min_overlap: float = 0.05) -> None:
    """Check that every image is a readable 3-D image and that each CT/SPECT pair overlaps in space.

    Images are NIfTI files, or DICOM (a CT series folder, an NM file; see corx.io.dicom), read from
    their headers by corx.io.inputs.
    """
    from .inputs import image_geometry

    for tp in manifest.timepoints:
        ct = image_geometry(tp.ct, "ct")
        spect = image_geometry(tp.spect, "spect", tp.calibration_bq_per_count)
        for (shape, affine), p in ((ct, tp.ct), (spect, tp.spect)):
            if len(shape) != 3:
                raise CorxError(f"{p}: expected a 3-D image, got shape {shape}")
            if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
                raise CorxError(f"{p}: the image has an invalid affine (orientation/spacing)")
        frac = overlap_fraction(ct[0], ct[1], spect[0], spect[1])
        if frac < min_overlap:
            raise CorxError(f"{tp.spect}: SPECT does not overlap its CT {tp.ct.name} in space "
                            f"(overlap {frac:.1%} of the smaller field of view)")
    if manifest.labels is not None:
        load_image(manifest.labels)

"""Constants of the phantom: label numbers, 177Lu physics and the two cohort specifications."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..radionuclide import LU177_LAMBDA_PER_H

# ---- labels (docs/CONVENTIONS.md) -------------------------------------------------------------------------
LABELS: dict[str, int] = {
    "background": 0,
    "body": 1,
    "muscle": 2,
    "lungs": 3,
    "liver": 4,
    "spleen": 5,
    "kidney_cortex": 6,
    "kidney_medulla": 7,
    "bladder": 8,
    "bone": 9,
    "bowel": 10,
}
TUMOUR_LABEL_BASE = 11  # tumour k (0-based) has label 11 + k
MAX_TUMOURS = 5
LABEL_NAMES: dict[int, str] = {v: k for k, v in LABELS.items()}
LABEL_NAMES.update({TUMOUR_LABEL_BASE + k: f"tumour_{k + 1}" for k in range(MAX_TUMOURS)})
KIDNEY_LABELS = (LABELS["kidney_cortex"], LABELS["kidney_medulla"])

# ---- 177Lu (ICRP 107, defined once in scripts/radionuclide.py) ---------------------------------------------
LAMBDA_PHYS = LU177_LAMBDA_PER_H  # 1/h

# ---- storage -------------------------------------------------------------------------------------------------
FIELD_SCALE = 0.001  # true fields are stored as int16 with NIfTI scl_slope = 0.001 voxel (range +-32.7 voxels)

PROTOCOLS = ("paper",)


@dataclass(frozen=True)
class CohortSpec:
    """Acquisition and reconstruction settings of one cohort (full size, downsample=1).

    Grids are axis aligned; ``flip_x`` gives an LAS-style affine (first axis runs right->left).
    SPECT noise: the expected reconstructed counts of a voxel are ``activity [Bq] * counts_per_bq``; Poisson
    counts are drawn, converted back to Bq/mL and smoothed by the post-filter. The total resolution (PSF before
    the noise combined with the post-filter) is ``fwhm_mm``.
    """

    name: str
    timepoints: tuple[tuple[str, float], ...]  # (id, hours post-injection)
    reference: str
    pair_exclude: tuple[str, ...]  # time points written but left out of the registration pairs
    spect_matrix_xy: int
    spect_slices: tuple[int, int]  # inclusive range of the SPECT slice count (per patient)
    spect_spacing_mm: float
    flip_x: bool
    ct_matrix_xy: int
    ct_spacing_xy_mm: float
    ct_slice_mm: tuple[float, ...]  # slice thickness choices (one drawn per time point)
    ct_extent_jitter_mm: float  # the CT axial extent differs from the SPECT one by up to this
    ct_noise_hu: float  # low-dose CT noise (standard deviation, HU)
    fwhm_mm: float  # total SPECT resolution
    postfilter_fwhm_mm: float  # part of it applied after the noise (correlated noise, as OSEM + filter)
    counts_per_bq: float  # effective reconstructed counts per Bq in a voxel (sensitivity * duration)
    injected_gbq: tuple[float, float, float, float]  # mean, sd, min, max
    three_timepoint_fraction: float  # share of patients with one non-reference time point missing
    validation_fraction: float  # share of patients (by patient) in "validation"

    @property
    def timepoint_ids(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.timepoints)

    @property
    def hours(self) -> dict[str, float]:
        return dict(self.timepoints)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["timepoints"] = [{"id": t, "hours": h} for t, h in self.timepoints]
        return out


# Count levels (effective: sensitivity x duration / reconstruction noise amplification): the liver interior
# (~0.03 MBq/mL at 24 h) shows a coefficient of variation of ~12-19 % (internal) and ~13-15 % (external) in the
# reconstructed SPECT (measured on generated full-size patients; tests/test_phantom.py checks 7-30 %).
INTERNAL = CohortSpec(
    name="internal",
    timepoints=(("4h", 4.0), ("24h", 24.0), ("48h", 48.0), ("120h", 120.0)),
    reference="4h",
    pair_exclude=(),
    spect_matrix_xy=128,
    spect_slices=(128, 128),
    spect_spacing_mm=3.87,
    flip_x=False,
    ct_matrix_xy=256,
    ct_spacing_xy_mm=1.953125,
    ct_slice_mm=(3.0,),
    ct_extent_jitter_mm=12.0,
    ct_noise_hu=18.0,
    fwhm_mm=11.0,
    postfilter_fwhm_mm=6.0,
    counts_per_bq=0.0035,
    injected_gbq=(7.0, 1.0, 5.5, 8.5),
    three_timepoint_fraction=0.25,
    validation_fraction=0.15,
)

EXTERNAL = CohortSpec(
    name="external",
    timepoints=(("0.5h", 0.5), ("4h", 4.0), ("24h", 24.0), ("48h", 48.0)),
    reference="4h",
    pair_exclude=("0.5h",),
    spect_matrix_xy=103,
    spect_slices=(84, 102),
    spect_spacing_mm=4.88,
    flip_x=True,
    ct_matrix_xy=256,
    ct_spacing_xy_mm=1.953125,
    ct_slice_mm=(2.5, 3.0, 4.0),
    ct_extent_jitter_mm=25.0,
    ct_noise_hu=25.0,
    fwhm_mm=14.0,
    postfilter_fwhm_mm=8.0,
    counts_per_bq=0.0015,
    injected_gbq=(7.96, 0.35, 7.2, 8.6),
    three_timepoint_fraction=0.0,
    validation_fraction=1.0,
)

COHORTS: dict[str, CohortSpec] = {"internal": INTERNAL, "external": EXTERNAL}

# The paper's data sets (section 2.1 and 2.3): internal 22 sets (17 x 4 + 5 x 3 time points) -> 234 ordered pairs,
# 204 training / 30 validation (validation = 1 four- + 3 three-time-point sets); external 14 sets, 0.5 h excluded
# from the pairs -> 84 pairs, all validation.
PAPER: dict[str, dict[str, int]] = {
    "internal": {"patients": 22, "three_timepoint": 5, "val_four": 1, "val_three": 3},
    "external": {"patients": 14, "three_timepoint": 0, "val_four": 14, "val_three": 0},
}


def get_cohort(name: str) -> CohortSpec:
    """The spec of a cohort by name; ValueError naming the choices otherwise."""
    if not isinstance(name, str) or name not in COHORTS:
        raise ValueError(f"unknown cohort {name!r}: choose one of {', '.join(COHORTS)}")
    return COHORTS[name]


def check_downsample(downsample: Any) -> int:
    """Validate the downsample factor (a positive integer)."""
    if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
        raise ValueError(f"downsample must be a positive integer, got {downsample!r}")
    if downsample > 8:
        raise ValueError(f"downsample must be at most 8 (SPECT would have < 16 voxels per axis), got {downsample}")
    return downsample


def patient_id(index: int) -> str:
    """Patient folder name for a 0-based index: 0 -> 'P001'."""
    return f"P{index + 1:03d}"

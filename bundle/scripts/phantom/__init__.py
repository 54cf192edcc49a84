"""Synthetic serial 177Lu-DOTATATE SPECT/CT phantom with ground truth (numpy, scipy and nibabel only).

Public API:
  generate_patient(out_dir, cohort, index, seed, downsample=1, n_timepoints=None, overwrite=False) -> Path
  generate_cohort(out_dir, cohort="internal", patients=4, seed=0, protocol=None, downsample=1, overwrite=False)
  run_phantom(out, ...)  (the `corx phantom` command)
  plan_cohort / build_datalist / count_pairs  (planning and pairs, without images)
The on-disk layout, frames and field convention are those of docs/CONVENTIONS.md.
"""

from .datalist import PatientPlan, build_datalist, count_pairs, ordered_pairs, plan_cohort
from .generate import generate_cohort, generate_patient, run_phantom
from .kinetics import Curve
from .spec import (
    COHORTS,
    EXTERNAL,
    FIELD_SCALE,
    INTERNAL,
    LABEL_NAMES,
    LABELS,
    LAMBDA_PHYS,
    PAPER,
    TUMOUR_LABEL_BASE,
    CohortSpec,
)

__all__ = [
    "COHORTS",
    "EXTERNAL",
    "FIELD_SCALE",
    "INTERNAL",
    "LABELS",
    "LABEL_NAMES",
    "LAMBDA_PHYS",
    "PAPER",
    "TUMOUR_LABEL_BASE",
    "CohortSpec",
    "Curve",
    "PatientPlan",
    "build_datalist",
    "count_pairs",
    "generate_cohort",
    "generate_patient",
    "ordered_pairs",
    "plan_cohort",
    "run_phantom",
]

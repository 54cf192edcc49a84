"""Cohort planning (time points and split per patient) and the datalist of ordered registration pairs.

Planning needs no images, so the paper's counts can be checked without generating 36 patients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .spec import PAPER, PROTOCOLS, CohortSpec, get_cohort, patient_id

COHORT_CODES = {"internal": 0, "external": 1}


def patient_seed(seed: int, cohort: str, index: int) -> np.random.SeedSequence:
    """The seed sequence of one patient: depends on (seed, cohort, index) only, not on the cohort size."""
    return np.random.SeedSequence([int(seed), COHORT_CODES[cohort], int(index)])


@dataclass(frozen=True)
class PatientPlan:
    """What a patient will contain: id, index, time point ids (acquisition order) and split."""

    index: int
    patient_id: str
    timepoints: tuple[str, ...]
    split: str  # "training" or "validation"


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_index(index: Any) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < 999:
        raise ValueError(f"patient index must be an integer in 0..998, got {index!r}")
    return int(index)


def pairable(spec: CohortSpec, timepoints: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t for t in timepoints if t not in spec.pair_exclude)


def patient_timepoints(spec: CohortSpec, index: int, seed: int, n_timepoints: int | None = None) -> tuple[str, ...]:
    """Time points of a patient: all of the protocol, or ``n_timepoints`` of them (the reference and the
    time points excluded from pairs are always kept; the dropped ones are drawn from the patient's seed).
    With ``n_timepoints=None`` a share ``spec.three_timepoint_fraction`` of patients miss one time point."""
    rng = np.random.default_rng(patient_seed(seed, spec.name, index).spawn(1)[0])
    droppable = [t for t in pairable(spec, spec.timepoint_ids) if t != spec.reference]
    order = [droppable[i] for i in rng.permutation(len(droppable))]
    missing_one = rng.random() < spec.three_timepoint_fraction
    n_all = len(spec.timepoints)
    n_min = n_all - len(droppable) + 1  # at least two pairable time points
    if n_timepoints is None:
        n_timepoints = n_all - 1 if missing_one else n_all
    if isinstance(n_timepoints, bool) or not isinstance(n_timepoints, (int, np.integer)) \
            or not n_min <= n_timepoints <= n_all:
        raise ValueError(f"n_timepoints for the {spec.name} cohort must be an integer in {n_min}..{n_all} "
                         f"(protocol {', '.join(spec.timepoint_ids)}), got {n_timepoints!r}")
    dropped = set(order[: n_all - int(n_timepoints)])
    return tuple(t for t in spec.timepoint_ids if t not in dropped)


def plan_cohort(cohort: str, patients: int = 4, seed: int = 0, protocol: str | None = None) -> list[PatientPlan]:
    """Time points and split of every patient. ``protocol='paper'`` ignores ``patients`` (see spec.PAPER)."""
    spec = get_cohort(cohort)
    seed = check_seed(seed)
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)} or leave it unset")
    if protocol == "paper":
        return _plan_paper(spec, seed)
    if isinstance(patients, bool) or not isinstance(patients, (int, np.integer)) or patients < 1:
        raise ValueError(f"patients must be a positive integer, got {patients!r}")
    if patients > 999:
        raise ValueError(f"patients must be at most 999 (ids P001..P999), got {patients}")
    n = int(patients)
    if spec.validation_fraction >= 1.0:
        val = set(range(n))
    elif n < 2:
        val = set()
    else:
        n_val = min(n - 1, max(1, round(spec.validation_fraction * n)))
        val = set(np.random.default_rng([seed, n, 17]).choice(n, n_val, replace=False).tolist())
    return [PatientPlan(i, patient_id(i), patient_timepoints(spec, i, seed),
                        "validation" if i in val else "training") for i in range(n)]


def _plan_paper(spec: CohortSpec, seed: int) -> list[PatientPlan]:
    counts = PAPER[spec.name]
    n, n_three = counts["patients"], counts["three_timepoint"]
    rng = np.random.default_rng([seed, 2024, COHORT_CODES[spec.name]])
    three = set(rng.choice(n, n_three, replace=False).tolist()) if n_three else set()
    four = [i for i in range(n) if i not in three]
    val = set(rng.choice(four, counts["val_four"], replace=False).tolist())
    if counts["val_three"]:
        val |= set(rng.choice(sorted(three), counts["val_three"], replace=False).tolist())
    n_all = len(spec.timepoints)
    return [PatientPlan(i, patient_id(i), patient_timepoints(spec, i, seed, n_all - 1 if i in three else n_all),
                        "validation" if i in val else "training") for i in range(n)]


def ordered_pairs(spec: CohortSpec, timepoints: tuple[str, ...]) -> list[tuple[str, str]]:
    """All nP2 ordered (fixed, moving) pairs of the pairable time points."""
    ids = pairable(spec, timepoints)
    return [(f, m) for f in ids for m in ids if f != m]


def pair_entry(spec: CohortSpec, pid: str, fixed: str, moving: str) -> dict[str, Any]:
    """One datalist entry (paths relative to the cohort folder); truth fields when fixed is the reference."""
    hours = spec.hours
    entry: dict[str, Any] = {
        "patient_id": pid, "fixed_id": fixed, "moving_id": moving,
        "fixed_ct": f"{pid}/ct_{fixed}.nii.gz", "moving_ct": f"{pid}/ct_{moving}.nii.gz",
        "fixed_spect": f"{pid}/spect_{fixed}.nii.gz", "moving_spect": f"{pid}/spect_{moving}.nii.gz",
        "fixed_hours": hours[fixed], "moving_hours": hours[moving],
    }
    if fixed == spec.reference:
        entry["field_spect"] = f"{pid}/truth/field_spect_{moving}.nii.gz"
        entry["field_ct"] = f"{pid}/truth/field_ct_{moving}.nii.gz"
    entry["labels_fixed"] = f"{pid}/truth/labels_{fixed}.nii.gz"
    entry["labels_moving"] = f"{pid}/truth/labels_{moving}.nii.gz"
    return entry


def build_datalist(cohort: str, plans: list[PatientPlan]) -> dict[str, list[dict[str, Any]]]:
    """{"training": [...], "validation": [...]} with every ordered pair of every patient."""
    spec = get_cohort(cohort)
    out: dict[str, list[dict[str, Any]]] = {"training": [], "validation": []}
    for plan in plans:
        for fixed, moving in ordered_pairs(spec, plan.timepoints):
            out[plan.split].append(pair_entry(spec, plan.patient_id, fixed, moving))
    return out


def count_pairs(cohort: str, plans: list[PatientPlan]) -> dict[str, int]:
    """Number of pairs per split."""
    dl = build_datalist(cohort, plans)
    return {k: len(v) for k, v in dl.items()}
